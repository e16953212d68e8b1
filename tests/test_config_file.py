"""
C{--config FILE}: options in a TOML file, validated as the command line's,
with the command line and the environment winning over the file.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from sora2proxy._config import ConfigError
from sora2proxy._tap import Options, reread
from sora2proxy.ops._config_file import line_of


def write(test: SynchronousTestCase, text: str) -> str:
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "sora2proxy.toml")
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    test.addCleanup(os.remove, path)
    return path


def parse(*argv: str, environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {})
    options.parseOptions(list(argv))
    return options


def refused(test: SynchronousTestCase, *argv: str) -> str:
    """The one line the proxy exits with for C{argv}."""
    error = test.assertRaises(SystemExit, parse, *argv)
    return str(error.code)


FILE = """\
# the proxy's options
upstream = ["http://127.0.0.1:3101/api", "http://127.0.0.1:3102/api"]
listen = ["tcp:3300:interface=127.0.0.1"]
attempts = 5
timeout = 2.5
health-path = ""
jitter = true
require-idempotency-key = ["POST:/videos"]
rate-limit = ["POST:/videos=10/m"]
max-concurrent = ["GET:/videos/*/events=2"]
"""


class FileTests(SynchronousTestCase):
    def test_file_options(self) -> None:
        """Every kind of option set in the file reaches the configuration."""
        options = parse("--config", write(self, FILE))
        config = options.config
        assert config is not None
        self.assertEqual(config.upstreams, ("http://127.0.0.1:3101/api", "http://127.0.0.1:3102/api"))
        self.assertEqual(options.listen, ["tcp:3300:interface=127.0.0.1"])
        self.assertEqual((config.attempts, config.timeout), (5, 2.5))
        self.assertEqual(config.health_path, "")
        self.assertTrue(config.jitter)
        self.assertEqual(config.require_idempotency_key, ("POST:/videos",))
        self.assertEqual(config.rate_limit, ("POST:/videos=10/m",))
        self.assertEqual(config.max_concurrent, ("GET:/videos/*/events=2",))
        self.assertEqual(config.prefix, "/api/proxy")  # not in the file: the default

    def test_every_repeatable_option_allowed(self) -> None:
        """Every option given more than once on the command line (an opt_ method) is a list in the file."""
        from sora2proxy.ops._config_file import REPEATABLE

        methods = {name[4:].replace("_", "-") for name in dir(Options) if name.startswith("opt_")}
        self.assertEqual(set(REPEATABLE), methods - {"help", "version", "config"})

    def test_command_line_wins(self) -> None:
        """An option on the command line overrides the file's, a repeatable one as a whole."""
        path = write(self, FILE)
        options = parse("--config", path, "--attempts", "2", "--upstream", "http://127.0.0.1:4000/")
        config = options.config
        assert config is not None
        self.assertEqual(config.attempts, 2)
        self.assertEqual(config.upstreams, ("http://127.0.0.1:4000/",))
        self.assertEqual(config.timeout, 2.5)

    def test_command_line_before_config_wins(self) -> None:
        """The command line wins wherever --config stands in it."""
        config = parse("--attempts", "2", "--config", write(self, FILE)).config
        assert config is not None
        self.assertEqual(config.attempts, 2)

    def test_environment_wins(self) -> None:
        """$SORA2PROXY_UPSTREAM overrides the file's upstreams."""
        environ = {"SORA2PROXY_UPSTREAM": "http://127.0.0.1:5000/api"}
        config = parse("--config", write(self, FILE), environ=environ).config
        assert config is not None
        self.assertEqual(config.upstreams, ("http://127.0.0.1:5000/api",))

    def test_one_upstream_as_a_string(self) -> None:
        """A repeatable option may be given one value as a plain string."""
        config = parse("--config", write(self, 'upstream = "http://127.0.0.1:3999/"\n')).config
        assert config is not None
        self.assertEqual(config.upstreams, ("http://127.0.0.1:3999/",))

    def test_same_validation(self) -> None:
        """A bad value in the file gets the command line's own message."""
        path = write(self, "attempts = 0\n")
        self.assertEqual(
            refused(self, "--config", path),
            "sora2proxy: error: --attempts: must be a whole number of 1 or more, got 0",
        )
        self.assertEqual(refused(self, "--attempts", "0"), refused(self, "--config", path))

    def test_bad_upstream(self) -> None:
        """A bad URL in the file is refused as on the command line."""
        message = refused(self, "--config", write(self, 'upstream = ["ftp://x"]\n'))
        self.assertEqual(
            message, "sora2proxy: error: --upstream: 'ftp://x' needs a scheme: http:// or https://"
        )


class FileErrorTests(SynchronousTestCase):
    def test_unknown_key_names_its_line(self) -> None:
        """An unknown key is an error that names the file's line and a close option."""
        path = write(self, 'attempts = 2\n\n  upstreams = ["http://a:1/"]\n')
        self.assertEqual(
            refused(self, "--config", path),
            f"sora2proxy: error: --config: {path} line 3: 'upstreams' is not an option"
            " (did you mean 'upstream'?)",
        )

    def test_table_is_unknown(self) -> None:
        """A TOML table is not an option, named by its header's line."""
        path = write(self, "attempts = 2\n[limits]\nrate = 1\n")
        self.assertIn(f"{path} line 2: 'limits' is not an option", refused(self, "--config", path))

    def test_wrong_kind(self) -> None:
        """A value of the wrong kind names the line: a flag takes true or false, a list strings."""
        path = write(self, 'dev = "yes"\n')
        self.assertIn(f"{path} line 1: dev takes true or false, got 'yes'", refused(self, "--config", path))
        path = write(self, "timeout = 1\nupstream = [1]\n")
        self.assertIn(f"{path} line 2: upstream takes a list of strings", refused(self, "--config", path))
        path = write(self, "timeout = true\n")
        self.assertIn(f"{path} line 1: timeout takes a string or a number", refused(self, "--config", path))

    def test_not_toml(self) -> None:
        """A file that is not TOML: the parser's message, its line included."""
        path = write(self, "attempts = 2\ntimeout = 1 2\n")
        message = refused(self, "--config", path)
        self.assertTrue(message.startswith(f"sora2proxy: error: --config: {path}: "), message)
        self.assertIn("line 2", message)

    def test_no_nesting(self) -> None:
        """A config file cannot name another config file."""
        path = write(self, 'config = "/etc/other.toml"\n')
        self.assertIn("cannot name another one", refused(self, "--config", path))

    def test_missing_file_exits_78(self) -> None:
        """A file that cannot be read stops start-up with status 78, as other files options name."""
        error = self.assertRaises(SystemExit, parse, "--config", "/nonexistent/sora2proxy.toml")
        self.assertEqual(error.code, 78)

    def test_reread_raises(self) -> None:
        """A reload reads the file again and raises the error instead of exiting."""
        path = write(self, "attempts = 4\n")
        self.assertEqual(reread(["--config", path], {}).config.attempts, 4)
        with open(path, "w", encoding="utf-8") as file:
            file.write("attempts = -1\n")
        error = self.assertRaises(ConfigError, reread, ["--config", path], {})
        self.assertEqual(str(error), "--attempts: must be a whole number of 1 or more, got -1")
        os.remove(path)
        error = self.assertRaises(ConfigError, reread, ["--config", path], {})
        self.assertIn("cannot read", str(error))
        with open(path, "w", encoding="utf-8") as file:
            file.write("")


class LineTests(SynchronousTestCase):
    def test_line_of(self) -> None:
        """A key is found bare, quoted, dotted or as a table header; 0 when absent."""
        text = 'a = 1\n"b" = 2\nc.d = 3\n[e]\n'
        self.assertEqual([line_of(text, k) for k in "abcef"], [1, 2, 3, 4, 0])
