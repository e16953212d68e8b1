"""
End to end as a user runs it, in subprocesses: twistd with no backend, then a
backend started later; and the embedding example of docs/embedding.rst.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .helpers import refused_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def get(url: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Child:
    """
    A subprocess whose output a thread reads all along (a child blocked on a
    full pipe would stop answering), matched line by line against patterns.
    """

    def __init__(
        self, test: SynchronousTestCase, argv: list[str], cwd: str = str(ROOT), **popen: Any
    ) -> None:
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._matched = 0
        test.addCleanup(self.stop)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: str, seconds: float = 20) -> re.Match[str]:
        """
        The first line, after the previous match, that matches C{pattern}.
        """
        deadline = time.monotonic() + seconds
        with self._seen:
            while True:
                while self._matched < len(self.lines):
                    line = self.lines[self._matched]
                    self._matched += 1
                    found = re.search(pattern, line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{pattern!r} not seen in:\n{''.join(self.lines)}")
                self._seen.wait(min(left, 0.2))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_backend(test: SynchronousTestCase) -> int:
    """
    Start C{tests.upstream_main} on a free loopback port (stopped by the test's cleanup).

    @return: its port.
    """
    backend = Child(test, [sys.executable, "-m", "tests.upstream_main"])
    return int(backend.wait_for(r"listening on (\d+)").group(1))


def start_proxy_process(test: SynchronousTestCase, *options: str) -> tuple[Child, int]:
    """
    Run C{twistd -n sora2proxy} on a free loopback port with C{options}.

    @return: the process and its public port.
    """
    proxy = Child(
        test,
        [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "sora2proxy",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            *options,
        ],
    )
    return proxy, int(proxy.wait_for(r"ProxySite starting on (\d+)").group(1))


def eventually(check: Any, seconds: float = 5) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


class NewUserTests(SynchronousTestCase):
    def test_no_backend_then_backend(self) -> None:
        """No backend: 503 JSON with the suggestion; a backend started later is used within an interval."""
        backend_port = refused_port()
        _, port = start_proxy_process(
            self,
            "--upstream", f"http://127.0.0.1:{backend_port}/api", "--health-interval", "0.5", "--admin-listen", "none",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api/proxy/users"
        time.sleep(0.2)
        status, headers, body = get(url)
        self.assertEqual(status, 503)
        self.assertIn("Retry-After", headers)
        details = json.loads(body)["details"]
        self.assertIn(details["errorType"], ("HEALTH_CHECK_FAILED", "ECONNREFUSED"))
        self.assertEqual(details["suggestion"], "Run: npm run dev:api")
        backend = Child(self, [sys.executable, "-m", "tests.upstream_main", str(backend_port)])
        backend.wait_for("listening on")
        started = time.monotonic()
        ok = eventually(lambda: get(url)[0] == 200, seconds=5)
        self.assertTrue(ok)
        self.assertLess(time.monotonic() - started, 1.5)
        status, _, body = get(url)
        self.assertEqual(json.loads(body)["uri"], "/api/users")


def readme_example() -> str:
    text = (ROOT / "docs" / "embedding.rst").read_text()
    block = text.split(".. code-block:: python", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


class EmbeddingTests(SynchronousTestCase):
    def test_readme_example(self) -> None:
        """The plain twisted.web embedding example (docs/embedding.rst) serves its own page and proxies /api/proxy."""
        source = readme_example()
        self.assertIn("build_proxy", source)
        backend = Child(self, [sys.executable, "-m", "tests.upstream_main"])
        backend_port = backend.wait_for(r"listening on (\d+)").group(1)
        source = source.replace("http://localhost:3101/api", f"http://127.0.0.1:{backend_port}/api")
        source = source.replace('"tcp:8080"', '"tcp:0:interface=127.0.0.1"')
        app = Child(self, [sys.executable, "-c", source])
        port = app.wait_for(r"listening on (\d+)").group(1)
        ok = eventually(lambda: get(f"http://127.0.0.1:{port}/api/proxy/videos?page=2")[0] == 200)
        self.assertTrue(ok, "".join(app.lines))
        status, _, body = get(f"http://127.0.0.1:{port}/api/proxy/videos?page=2")
        self.assertEqual(json.loads(body)["uri"], "/api/videos?page=2")
        status, _, body = get(f"http://127.0.0.1:{port}/")
        self.assertEqual((status, body), (200, b"my app"))
        status, _, body = get(f"http://127.0.0.1:{port}/api/proxy/")
        self.assertEqual(json.loads(body)["uri"], "/api/")
