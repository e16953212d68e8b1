"""
--workers: N processes share the public port (SO_REUSEPORT), each a whole
proxy; the parent restarts a worker that dies and stops them all.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.ops._workers import worker_argv

from .helpers import refused_port
from .test_cli import BIN, Child, get, start_backend
from .test_spawn import processes_with


class WorkerArgvTests(SynchronousTestCase):
    def test_argv(self) -> None:
        """Workers get the parent's options less --workers and --spawn; only worker 0 the admin port."""
        argv = ["--workers", "2", "--spawn", "demo=x", "--listen", "tcp:3200", "--admin-listen=tcp:9901",
                "--timeout", "5"]  # fmt: skip
        first = worker_argv(argv, 0, "tcp:9901")
        second = worker_argv(argv, 1, "tcp:9901")
        self.assertEqual(first[first.index("sora2proxy") + 1 :],
                         ["--listen", "tcp:3200", "--timeout", "5", "--admin-listen", "tcp:9901", "--worker-index", "0"])  # fmt: skip
        self.assertEqual(second[-4:], ["--admin-listen", "none", "--worker-index", "1"])

    def test_only_tcp(self) -> None:
        """--workers with a unix endpoint or port 0 stops start-up with one line."""
        import subprocess

        for listen in ("unix:/tmp/s2p-test.sock", "tcp:0"):
            result = subprocess.run(
                [str(BIN / "twistd"), "-n", "sora2proxy", "--workers", "2", "--listen", listen],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("--workers", result.stderr)
            self.assertNotIn("Traceback", result.stderr)


class WorkersTests(SynchronousTestCase):
    def test_two_workers(self) -> None:
        """Two workers both serve the port; a killed worker is restarted; stopping stops them all."""
        backend_port = start_backend(self)
        port = refused_port()
        parent = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--workers", "2", "--listen",
             f"tcp:{port}:interface=127.0.0.1", "--admin-listen", "none", "--upstream",
             f"http://127.0.0.1:{backend_port}/api", "--health-path", "", "--timeout", "5"],
        )  # fmt: skip
        _until(lambda: all(_count(parent, f"[worker-{i}]", "ProxySite starting on") for i in (0, 1)))
        served = set()
        deadline = time.monotonic() + 20
        while len(served) < 2 and time.monotonic() < deadline:
            status, _, _ = get(f"http://127.0.0.1:{port}/api/proxy/w")
            self.assertEqual(status, 200)
            time.sleep(0.01)
            served = {line.split("]")[0] for line in parent.lines if "/api/proxy/w 200" in line}
        self.assertEqual(len(served), 2, "both workers answered")
        [victim] = [
            pid for pid in processes_with(sys.executable) if _cmdline(pid).endswith("--worker-index 1")
        ]
        os.kill(victim, signal.SIGKILL)
        _until(lambda: _count(parent, "[worker-1]", "exited"))
        _until(lambda: _count(parent, "[worker-1]", "ProxySite starting on") >= 2)
        for _ in range(10):
            self.assertEqual(get(f"http://127.0.0.1:{port}/api/proxy/again")[0], 200)
        parent.process.send_signal(signal.SIGTERM)
        parent.process.wait(20)
        time.sleep(0.5)
        left = [pid for pid in processes_with(sys.executable) if "--worker-index" in _cmdline(pid)
                and f"tcp:{port}:" in _cmdline(pid)]  # fmt: skip
        self.assertEqual(left, [])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _count(child: Child, name: str, text: str) -> int:
    return sum(1 for line in list(child.lines) if name in line and text in line)


def _until(check: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    assert check(), "timed out"  # type: ignore[operator]
