"""
C{--spawn COMMAND}: child processes the proxy starts, logs, restarts with
backoff when they die, and stops (SIGTERM, then SIGKILL after a grace period)
when it stops.  Each command runs under a small supervisor that gives it its
own process group and dies with the proxy (Linux C{PR_SET_PDEATHSIG}), so no
orphan survives the proxy, even one killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Runs C{sh -c COMMAND} in its own process group; forwards SIGTERM/SIGINT to
#: the group (and SIGHUP, which stops nothing: a worker reloads), escalates
#: to SIGKILL after the grace period, and reaps leftovers when the shell
#: exits.  Dies with its parent (PR_SET_PDEATHSIG).
SUPERVISOR = """
import ctypes, os, signal, sys
command, grace = sys.argv[1], float(sys.argv[2])
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass
if os.getppid() == 1:
    sys.exit(1)
child = os.fork()
if child == 0:
    os.setsid()
    os.execvp("sh", ["sh", "-c", command])
def kill(sig):
    try:
        os.killpg(child, sig)
    except ProcessLookupError:
        pass
stopping = []
def stop(signum, frame):
    if stopping:
        return
    stopping.append(signum)
    kill(signum)
    signal.signal(signal.SIGALRM, lambda s, f: kill(signal.SIGKILL))
    signal.setitimer(signal.ITIMER_REAL, grace)
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, stop)
signal.signal(signal.SIGHUP, lambda s, f: stopping or kill(signal.SIGHUP))
while True:
    try:
        _, status = os.waitpid(child, 0)
        break
    except InterruptedError:
        continue
if not stopping:
    kill(signal.SIGTERM)  # the shell is gone: its leftovers go too
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""

_NAME = re.compile(r"\A([a-z][a-z0-9_.-]{0,31})=(.+)\Z", re.DOTALL)


def name_and_command(spec: str) -> tuple[str, str]:
    """
    Split C{NAME=COMMAND} (a lowercase name); without a name, one is made from the command
    (C{python -m sora2proxy.demo} is C{demo}, C{npm run dev:api} is C{npm}).
    """
    found = _NAME.match(spec)
    if found and " " not in found.group(1):
        return found.group(1), found.group(2)
    try:
        words = shlex.split(spec)
    except ValueError:
        words = spec.split()
    words = [w for w in words if "=" not in w.split("/")[0]] or words  # FOO=1 node x.js
    if not words:
        return "child", spec
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1].rsplit(".", 1)[-1], spec
    return os.path.basename(words[0]), spec


class _Child(ProcessProtocol):
    def __init__(self, spawned: SpawnedCommand) -> None:
        self._spawned = spawned
        self._partial: dict[int, bytes] = {}
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._partial.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[fd] = rest[-65536:]
        for line in lines:
            self._spawned.output(line.rstrip(b"\r").decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self._spawned.output(rest.decode("utf-8", "replace"))
        self._partial = {}
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self._spawned.ended(code, signal)
        self.ended.callback(None)


@define
class SpawnedCommand(Service):
    """
    One C{--spawn} command as a service.

    @ivar spec: C{COMMAND} or C{NAME=COMMAND}.
    @ivar grace: seconds between SIGTERM and SIGKILL on stop.
    @ivar backoff: first wait before a restart; doubles up to C{max_backoff}.
    @ivar last_exit: how the child last exited (C{status 1}, C{signal 9}).
    @ivar exited_at: when it last exited.
    @ivar restart_at: when it starts again, while a restart is pending.
    @ivar fatal_status: an exit status that means restarting cannot help (a
        worker that cannot bind its port): the child is not restarted and
        C{on_fatal} is called with its last line of output and the status.
    """

    log = Logger()

    spec: str
    _reactor: Any
    grace: float = 5.0
    backoff: float = 1.0
    max_backoff: float = 30.0
    fatal_status: int | None = None
    on_fatal: Callable[[str, int], object] | None = None
    name: str = field(init=False)
    command: str = field(init=False)
    restarts: int = field(default=0, init=False)
    _child: _Child | None = field(default=None, init=False)
    _transport: Any = field(default=None, init=False)
    _restart: IDelayedCall | None = field(default=None, init=False)
    _started_at: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)
    last_exit: str | None = field(default=None, init=False)
    exited_at: float | None = field(default=None, init=False)
    restart_at: float | None = field(default=None, init=False)
    _output: deque[str] = field(factory=lambda: deque(maxlen=3), init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)
        self.name, self.command = name_and_command(self.spec)

    @property
    def pid(self) -> int | None:
        """
        The supervisor's process id while it runs.
        """
        return None if self._transport is None else self._transport.pid

    @property
    def alive(self) -> bool:
        """
        Whether the child runs now.
        """
        return self._transport is not None

    @property
    def last_output(self) -> tuple[str, ...]:
        """
        Its last few output lines (they are in the proxy's log, tagged with its name).
        """
        return tuple(self._output)

    def startService(self) -> None:
        Service.startService(self)
        self._start()

    def _start(self) -> None:
        self._restart = None
        self.restart_at = None
        self._child = _Child(self)
        self._started_at = self._reactor.seconds()
        argv = [sys.executable, "-c", SUPERVISOR, self.command, str(self.grace)]
        self._transport = self._reactor.spawnProcess(self._child, sys.executable, argv, env=os.environ)
        self.log.info("[{name}] started: {command}", name=self.name, command=self.command)

    def output(self, line: str) -> None:
        """
        A line the child printed, logged under its name.
        """
        self._output.append(line[:200])
        self.log.info("[{name}] {line}", name=self.name, line=line)

    def ended(self, code: int | None, signal: int | None) -> None:
        """
        The child exited; restart it with backoff unless stopping.
        """
        self._transport = None
        how = f"signal {signal}" if signal else f"status {code}"
        self.last_exit, self.exited_at = how, self._reactor.seconds()
        if not self.running:
            self.log.info("[{name}] stopped ({how})", name=self.name, how=how)
            return
        if code is not None and code == self.fatal_status and self.on_fatal is not None:
            self.log.error("[{name}] could not start ({how}); not restarted", name=self.name, how=how)
            self.on_fatal(f"{self._output[-1] if self._output else ''} ({self.name})", code)
            return
        if self._reactor.seconds() - self._started_at > 10 * self.backoff:
            self._failures = 0  # it ran for a while: start the backoff over
        delay = min(self.max_backoff, self.backoff * 2**self._failures)
        self._failures += 1
        self.restarts += 1
        self.log.warn(
            "[{name}] exited ({how}); restarting in {delay:g} s", name=self.name, how=how, delay=delay
        )
        self.restart_at = self.exited_at + delay
        self._restart = self._reactor.callLater(delay, self._start)

    def hangup(self) -> None:
        """
        Pass SIGHUP to the command, if it runs (a worker reloads its configuration).
        """
        if self._transport is not None:
            self._transport.signalProcess("HUP")

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        child, transport = self._child, self._transport
        if child is None or transport is None:
            return succeed(None)
        transport.signalProcess("TERM")  # the supervisor escalates to SIGKILL after the grace

        def last_resort() -> None:
            if self._transport is not None:
                self._transport.signalProcess("KILL")

        killer = self._reactor.callLater(self.grace + 2, last_resort)

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()

        return child.ended.addCallback(done)
