"""
--spawn: children started, their output logged under a name, restarted after
a crash, stopped with the proxy, and no orphan left behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sora2proxy.ops._spawn import SpawnedCommand, name_and_command

from .helpers import reactor, wait
from .test_cli import BIN, Child


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line starts with C{marker}."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if cmdline.startswith(marker) and state != "Z":
            found.append(int(entry.name))
    return found


class NameTests(SynchronousTestCase):
    def test_names(self) -> None:
        """A child is named by NAME=, by python -m's module, or by its program."""
        self.assertEqual(name_and_command("api=npm run dev:api"), ("api", "npm run dev:api"))
        self.assertEqual(name_and_command("python -m sora2proxy.demo --port 3101")[0], "demo")
        self.assertEqual(name_and_command("/usr/bin/node server.js")[0], "node")
        self.assertEqual(name_and_command("FOO=1 node x.js")[0], "node")
        self.assertEqual(name_and_command("")[0], "child")


class SpawnTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def spawned(self, spec: str, **kwargs: Any) -> SpawnedCommand:
        service = SpawnedCommand(spec, reactor, **kwargs)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def lines_of(self, name: str) -> list[str]:
        return [e["line"] for e in self.events if e.get("name") == name and "line" in e]

    @inlineCallbacks
    def test_output_prefixed(self) -> Any:
        """Each line a child prints is logged under its name, stdout and stderr alike."""
        self.spawned("greeter=echo hello; echo world >&2; printf 'no newline'; sleep 30")
        for _ in range(200):
            if len(self.lines_of("greeter")) >= 2:
                break
            yield wait(0.01)
        self.assertIn("hello", self.lines_of("greeter"))
        self.assertIn("world", self.lines_of("greeter"))

    @inlineCallbacks
    def test_restarted_after_crash(self) -> Any:
        """A child that dies is restarted, with a growing wait."""
        service = self.spawned("crasher=echo up; exit 3", backoff=0.05)
        for _ in range(300):
            if service.restarts >= 3:
                break
            yield wait(0.01)
        self.assertGreaterEqual(service.restarts, 3)
        self.assertGreaterEqual(self.lines_of("crasher").count("up"), 3)
        yield service.stopService()

    @inlineCallbacks
    def test_stopped_with_its_children(self) -> Any:
        """Stopping kills the child and the processes it started: no orphans."""
        service = self.spawned("tree=sleep 301.5 & sleep 302.5")
        for _ in range(200):
            if processes_with("sleep 302.5"):
                break
            yield wait(0.01)
        self.assertEqual(len(processes_with("sleep 301.5")), 1)
        yield service.stopService()
        for _ in range(200):
            if not processes_with("sleep 301.5") and not processes_with("sleep 302.5"):
                break
            yield wait(0.01)
        self.assertEqual(processes_with("sleep 301.5") + processes_with("sleep 302.5"), [])

    @inlineCallbacks
    def test_sigkill_after_grace(self) -> Any:
        """A child that ignores SIGTERM is killed after the grace period."""
        service = self.spawned("stubborn=trap '' TERM; sleep 303.5; sleep 303.5", grace=0.3)
        for _ in range(200):
            if processes_with("sleep 303.5"):
                break
            yield wait(0.01)
        started = time.monotonic()
        yield service.stopService()
        self.assertLess(time.monotonic() - started, 3)
        for _ in range(100):
            if not processes_with("sleep 303.5"):
                break
            yield wait(0.01)
        self.assertEqual(processes_with("sleep 303.5"), [])


class OrphanTests(SynchronousTestCase):
    def test_proxy_killed_hard(self) -> None:
        """Even when the proxy is killed with SIGKILL, its spawned children die with it."""
        proxy = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
             "--admin-listen", "none", "--health-path", "", "--spawn", "orphan=sleep 304.5 & sleep 305.5"],
        )  # fmt: skip
        proxy.wait_for(r"\[orphan\] started")
        deadline = time.monotonic() + 10
        while not processes_with("sleep 305.5") and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(processes_with("sleep 304.5"))
        os.kill(proxy.process.pid, signal.SIGKILL)
        proxy.process.wait(10)
        deadline = time.monotonic() + 10
        while (
            processes_with("sleep 304.5") or processes_with("sleep 305.5")
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(processes_with("sleep 304.5") + processes_with("sleep 305.5"), [])


__all__ = ["sys"]
