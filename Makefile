# sora2proxy: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
ARGS ?=

.PHONY: run test lint types unit bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Editable install; setup.py also puts the checkout's root on sys.path so that
# twistd finds twisted/plugins/sora2proxy_plugin.py (tests/test_plugin.py proves it).
# The first line installs pyproject.toml's build requirements, so the build needs no
# isolated environment of its own (keep the two in step).
$(STAMP): setup.py pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

# `make run` needs only the proxy's own dependencies, not the test tools: a
# newcomer's first run installs less (the full install above counts as this one).
$(RUN_STAMP): setup.py pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e .
	touch $(RUN_STAMP)

# The proxy on :3200 with the demo backend on :3101 as its child; admin on 127.0.0.1:9901.
# A 1 s health interval so that the proxy notices the demo within a second of its start.
# `exec`: twistd replaces the recipe's shell, so the SIGTERM that GNU make passes on to
# the command it runs (an IDE's stop button, `kill`, `timeout`) reaches twistd, which
# stops the demo with it; Ctrl+C reaches the whole process group. Where setpriv has
# --pdeathsig (util-linux), twistd also gets SIGTERM if make itself is killed (SIGKILL).
DIE_WITH_MAKE = $(shell setpriv --pdeathsig TERM true >/dev/null 2>&1 && echo setpriv --pdeathsig TERM)
run: $(RUN_STAMP)
	exec $(DIE_WITH_MAKE) $(BIN)/twistd -n --pidfile= sora2proxy --health-interval 1 \
		--spawn "demo=$(abspath $(BIN))/python -m sora2proxy.demo --port 3101" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests twisted setup.py
	$(BIN)/ruff format --check src tests twisted setup.py

types: $(STAMP)
	$(BIN)/mypy src

unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q tests
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

test: lint types unit

# The long fault-injection soak (the suite runs a 12 s one); prints its counts.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --seconds 120

# A benchmark, not a test: prints figures, never fails the build.
bench: $(STAMP)
	-$(BIN)/python bench/run.py
	-$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) build *.egg-info .coverage .coverage.* _trial_temp
