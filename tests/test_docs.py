"""
The documentation as a reader meets it: README.rst and every docs/*.rst parse
cleanly with docutils, their links between pages lead somewhere, the README's
first screen holds what a newcomer types (Linux commands, ports that agree),
and every Python example in them runs: the Klein embedding example here, over
loopback against a real upstream (the plain twisted.web one in test_cli).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import docutils.core
import docutils.nodes
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy._config import DEFAULT_UPSTREAM

from .helpers import refused_port
from .test_cli import Child, eventually, get, start_proxy_process

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
EMBEDDING = ROOT / "docs" / "embedding.rst"
# No Pygments: code blocks parse the same whether or not it is installed.
PLAIN = {"syntax_highlight": "none"}


def problems(path: Path) -> str:
    """
    What docutils reports about C{path} at the WARNING level or above, as text.
    """
    stream = io.StringIO()
    docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"),
        source_path=str(path),
        settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5, **PLAIN},
    )
    return stream.getvalue()


def doctree(path: Path) -> docutils.nodes.document:
    settings = {"warning_stream": io.StringIO(), "report_level": 5, "halt_level": 5, **PLAIN}
    return docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"), source_path=str(path), settings_overrides=settings
    )


def code_blocks(path: Path, language: str) -> list[str]:
    """
    The text of each C{.. code-block:: LANGUAGE} of C{path}, in order.
    """
    return [
        node.astext()
        for node in doctree(path).findall(docutils.nodes.literal_block)
        if language in node["classes"]
    ]


def embedding_example(marker: str) -> str:
    """
    The Python example of docs/embedding.rst that contains C{marker}.
    """
    [source] = [block for block in code_blocks(EMBEDDING, "python") if marker in block]
    return source


class ParseTests(SynchronousTestCase):
    def test_every_page_parses_cleanly(self) -> None:
        """README.rst and every docs/*.rst render with no docutils warning or error (no malformed table)."""
        self.assertIn(ROOT / "docs" / "options.rst", PAGES)
        for page in PAGES:
            self.assertEqual(problems(page), "", page.name)

    def test_a_malformed_table_is_reported(self) -> None:
        """The check above sees a table whose text runs into the next column."""
        bad = Path(self.mktemp())
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text("=== ===\nab  cd\n=== ===\nabcde f\n=== ===\n")
        self.assertIn("Malformed table", problems(bad))

    def test_links_between_pages_lead_somewhere(self) -> None:
        """Every relative link names a file that exists and, after '#', a section of it."""
        seen = 0
        for page in PAGES:
            for reference in doctree(page).findall(docutils.nodes.reference):
                uri = reference.get("refuri", "")
                if not uri or re.match(r"[a-z]+:", uri):
                    continue
                seen += 1
                name, _, fragment = uri.partition("#")
                target = (page.parent / name).resolve()
                self.assertTrue(target.is_file(), f"{page.name}: {uri}")
                if fragment:
                    ids = {
                        i
                        for section in doctree(target).findall(docutils.nodes.section)
                        for i in section["ids"]
                    }
                    self.assertIn(fragment, ids, f"{page.name}: {uri}")
        self.assertGreater(seen, 10)


class FrontDoorTests(SynchronousTestCase):
    def test_first_screen(self) -> None:
        """The README's first 60 lines hold the two commands, the curls, a down backend and the status page."""
        first = "\n".join((ROOT / "README.rst").read_text().splitlines()[:60])
        for needed in (
            "make run",
            "make test",
            "curl -i localhost:3200/api/proxy/videos",
            "curl localhost:9901/ready",
            "http://localhost:9901/status",
            "HTTP/1.1 503 Service Unavailable",
            ".venv/bin/twistd -n --pidfile= sora2proxy",
        ):
            self.assertIn(needed, first)

    def test_commands_work_on_linux(self) -> None:
        """No macOS `open`, and every twistd command line writes no twistd.pid into the checkout."""
        for page in PAGES:
            for line in page.read_text().splitlines():
                self.assertIsNone(re.match(r"\s*(\$ )?open ", line), f"{page.name}: {line}")
                if re.match(r"\s*(\$ )?(\S*/)?twistd ", line):
                    self.assertIn("--pidfile=", line, f"{page.name}: {line}")

    def test_ports_agree(self) -> None:
        """The README's ports are the proxy's defaults and the demo's port in the Makefile and the default upstream."""
        demo_port = re.search(r"sora2proxy\.demo --port (\d+)", (ROOT / "Makefile").read_text())
        assert demo_port is not None
        self.assertEqual(demo_port.group(1), "3101")
        self.assertIn(":3101/", DEFAULT_UPSTREAM)
        readme = (ROOT / "README.rst").read_text()
        ports = set(re.findall(r"(?:localhost|127\.0\.0\.1):(\d+)", readme))
        # 3200 public, 3101 demo backend, 9901 admin, 4000 the "your own backend" example.
        self.assertEqual(ports, {"3200", "3101", "9901", "4000"})


class ExampleTests(SynchronousTestCase):
    def test_every_python_example_is_run(self) -> None:
        """The only Python examples are the two embedding ones, and the tests run both."""
        found = [block for page in PAGES for block in code_blocks(page, "python")]
        self.assertEqual(found, [embedding_example("putChild"), embedding_example("Klein()")])

    def test_klein_example(self) -> None:
        """The Klein example serves its page and forwards raw path, query and body to the backend and back (but /api/proxy/ alone: Klein's 404)."""
        source = embedding_example("Klein()")
        self.assertIn('@app.route("/api/proxy", branch=True)', source)
        backend = Child(self, [sys.executable, "-m", "tests.upstream_main"])
        backend_port = backend.wait_for(r"listening on (\d+)").group(1)
        self.assertIn('upstream="http://localhost:3101/api"', source)
        self.assertIn('"tcp:8080"', source)
        source = source.replace("http://localhost:3101/api", f"http://127.0.0.1:{backend_port}/api")
        source = source.replace('"tcp:8080"', '"tcp:0:interface=127.0.0.1"')
        app = Child(self, [sys.executable, "-c", source])
        port = app.wait_for(r"listening on (\d+)").group(1)
        base = f"http://127.0.0.1:{port}"
        raw = "/api/proxy/videos/a%2Fb;v=1?tag=x+y&tag=z&q=%26"
        self.assertTrue(eventually(lambda: get(base + raw)[0] == 200), "".join(app.lines))
        status, headers, body = get(base + raw)
        self.assertEqual((status, headers.get("X-Upstream")), (200, "yes"))
        self.assertEqual(json.loads(body)["uri"], "/api/videos/a%2Fb;v=1?tag=x+y&tag=z&q=%26")
        status, _, body = get(base + "/api/proxy/__last")
        self.assertEqual(json.loads(body), {"uri": "/api/videos/a%2Fb;v=1?tag=x+y&tag=z&q=%26"})
        post = urllib.request.Request(base + "/api/proxy/videos", data=b'{"prompt": "a cat"}', method="POST")
        with urllib.request.urlopen(post, timeout=10) as response:
            answer = json.loads(response.read())
        self.assertEqual(answer, {"method": "POST", "uri": "/api/videos", "body": '{"prompt": "a cat"}'})
        status, _, body = get(base + "/")
        self.assertEqual((status, body), (200, b"my app"))
        status, _, body = get(base + "/api/proxy")
        self.assertEqual((status, json.loads(body)["uri"]), (200, "/api"))
        status, headers, _ = get(base + "/api/proxy/")
        self.assertEqual((status, "X-Request-Id" in headers), (404, False))


def readme_literal(after: str) -> list[str]:
    """
    The lines of the README's literal block introduced by the line ending with C{after}.
    """
    text = (ROOT / "README.rst").read_text()
    block = text.split(after + "\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return [line for line in lines if line]


def curl(command: str) -> str:
    """
    Run one shell command line from the README (a curl), return what it printed.
    """
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
    return done.stdout


class FirstScreenTests(SynchronousTestCase):
    def test_curls_as_written(self) -> None:
        """The README's curls, run as written against the proxy and the demo as `make run` starts them (free ports instead of 3200, 9901, 3101), answer as their comments say."""
        demo_port = refused_port()
        spawn = f"demo={sys.executable} -m sora2proxy.demo --port {demo_port}"
        proxy, port = start_proxy_process(
            self,
            "--health-interval", "1", "--spawn", spawn, "--upstream", f"http://localhost:{demo_port}/api",
            "--admin-listen", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        [admin] = [
            m.group(1) for line in proxy.lines if (m := re.search(r"\[-\] QuietSite starting on (\d+)", line))
        ]
        ok = eventually(lambda: get(f"http://127.0.0.1:{port}/api/proxy/videos")[0] == 200, seconds=15)
        self.assertTrue(ok, "".join(proxy.lines))
        commands = readme_literal("In a second terminal::")
        self.assertEqual(len(commands), 5, commands)
        outputs = []
        for command in commands:
            command = command.replace("localhost:3200", f"127.0.0.1:{port}")
            command = command.replace("localhost:9901", f"127.0.0.1:{admin}")
            command = command.replace("xdg-open ", "curl -s ")  # no browser here: read the page
            command = command.replace("curl -N ", "curl -N --max-time 2 ")  # the stream lasts 6 s
            outputs.append(curl(command))
        self.assertIn("HTTP/1.1 200 OK", outputs[0])
        self.assertIn('{"data": [', outputs[0])
        self.assertIn('"id": "video_1", "prompt": "a cat on a skateboard"', outputs[1])
        self.assertIn('event: progress\ndata: {"id": "video_1"', outputs[2])
        self.assertIn('{"ready": true, "state": "serving"', outputs[3])
        self.assertIn("<html", outputs[4])
        self.assertIn("serving", outputs[4])

    def test_down_backend_as_shown(self) -> None:
        """The README's proxy-alone command with no backend answers the 503 the README shows, headers and body."""
        [command] = readme_literal("(``--pidfile=``: no ``twistd.pid`` file is written)::")
        self.assertEqual(command, ".venv/bin/twistd -n --pidfile= sora2proxy")
        [shown_command] = re.findall(r"Now ``(curl -i [^`]+)`` answers", (ROOT / "README.rst").read_text())
        shown = readme_literal(f"Now ``{shown_command}`` answers at once::")
        # The README's command with its defaults (upstream localhost:3101), on free ports.
        demo_port = refused_port()
        proxy, port = start_proxy_process(
            self, "--upstream", f"http://localhost:{demo_port}/api", "--admin-listen", "none"
        )
        proxy.wait_for(r"is down \(connection refused\)")  # the first health check, at start
        answer = curl(shown_command.replace("localhost:3200", f"127.0.0.1:{port}")).replace(
            str(demo_port), "3101"
        )
        head, _, body = answer.replace("\r", "").partition("\n\n")
        shown_head = shown[: shown.index(next(line for line in shown if line.startswith("{")))]
        self.assertEqual(head.splitlines()[0], shown_head[0])
        names = [line.split(":")[0] for line in head.splitlines()[1:]]
        for line in shown_head[1:]:
            self.assertIn(line.split(":")[0], names)
        self.assertIn("Retry-After: 5", head)
        shown_body = json.loads(" ".join(shown[len(shown_head) :]))
        actual = json.loads(body)
        for each in (shown_body, actual):
            del each["details"]["requestId"], each["details"]["traceId"]
        # A fast failure: a millisecond or two on a busy machine, as the README's 0 says.
        self.assertLessEqual(actual["details"].pop("durationMs"), 50)
        shown_body["details"].pop("durationMs")
        self.assertEqual(actual, shown_body)
