"""
`make run` leaves no orphans: stopping make the way an IDE's stop button,
`kill` or `timeout` does (SIGTERM to the make process alone), or even killing
make with SIGKILL, stops the proxy and the demo backend it spawned, and frees
their ports.  This test uses the fixed ports of `make run` (3200, 3101, 9901)
and is skipped when one of them is taken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .test_cli import ROOT, Child, eventually, get

PORTS = (3200, 3101, 9901)


def listening(port: int) -> bool:
    """Whether something accepts connections on loopback C{port}."""
    probe = socket.socket()
    try:
        return probe.connect_ex(("127.0.0.1", port)) == 0
    finally:
        probe.close()


def proxied_200() -> bool:
    """Whether a request through the proxy on 3200 gets 200 from the demo."""
    try:
        return get("http://127.0.0.1:3200/api/proxy/videos", timeout=2)[0] == 200
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """The live (not zombie) processes below C{pid}."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie waiting for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class MakeRunTests(SynchronousTestCase):
    def make_run(self) -> Child:
        """Start `make run` with this test's venv and wait for a proxied 200."""
        if shutil.which("make") is None:
            raise SkipTest("no make on this machine")
        taken = [port for port in PORTS if listening(port)]
        if taken:
            raise SkipTest(f"make run's ports {taken} are taken on this machine")
        venv = Path(sys.prefix)
        if not (venv / ".installed").exists():
            raise SkipTest(f"{venv} was not made by the Makefile (no .installed in it)")
        # -o: the venv counts as installed, whatever the age of setup.py.
        argv = ["make", "--no-print-directory", f"VENV={venv}", "-o", str(venv / ".installed-run"), "run"]
        make = Child(self, argv, cwd=str(ROOT), start_new_session=True)
        ok = eventually(proxied_200, seconds=60)
        self.assertTrue(ok, "".join(make.lines))
        # As the README shows: each request is an access line in make run's terminal.
        make.wait_for(
            r"^\S+ \[sora2proxy\.access\] GET /api/proxy/videos 200 tries=\d+ \d+ms  id=[0-9a-f]{32} trace=[0-9a-f]{32}$"
        )
        return make

    def kill_all(self, pids: set[int]) -> None:
        """If the test failed: nothing of this make run survives the test."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_make_with(self, signum: int) -> None:
        make = self.make_run()
        below = descendants(make.process.pid)
        self.addCleanup(self.kill_all, below)
        self.assertGreaterEqual(len(below), 3, "twistd, the demo's supervisor and the demo run under make")
        os.kill(make.process.pid, signum)  # make alone, not its process group
        make.process.wait(30)
        gone = eventually(lambda: not any(alive(pid) for pid in below), seconds=20)
        self.assertTrue(gone, f"left running: {[pid for pid in below if alive(pid)]}\n{''.join(make.lines)}")
        self.assertEqual([port for port in PORTS if listening(port)], [])

    def test_sigterm_to_make(self) -> None:
        """SIGTERM to the make process alone stops the proxy and the demo, and frees 3200, 3101 and 9901."""
        self.stop_make_with(signal.SIGTERM)

    def test_sigkill_to_make(self) -> None:
        """Even make killed with SIGKILL leaves nothing running (setpriv's parent-death signal)."""
        if shutil.which("setpriv") is None:
            raise SkipTest("no setpriv (util-linux): twistd cannot learn that make was killed")
        self.stop_make_with(signal.SIGKILL)
