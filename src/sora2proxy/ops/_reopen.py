"""
C{SIGUSR1} reopens the access-log file, so that C{logrotate} can rename it
and signal the proxy (no C{copytruncate}, no line lost or copied twice).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads

#: What C{signal.getsignal} returns.
_Handler = Callable[[int, FrameType | None], Any] | int | None


class Reopenable(Protocol):
    """
    A log that can open its file again (L{sora2proxy.ops._access_log.FileSink}).
    """

    def reopen(self) -> None:
        """
        Write what is buffered, then open the file's path again.
        """


class ReopenOnSignal(Service):
    """
    While running, C{signum} (C{SIGUSR1}) reopens C{log}'s file, on the
    reactor's thread (the handler only calls C{callFromThread}, as twistd's
    own log rotation does).  The handler that was installed before (twistd
    rotates C{--logfile} on C{SIGUSR1}) is still called; it is put back at
    stop.
    """

    def __init__(self, log: Reopenable, reactor: IReactorFromThreads, signum: int = signal.SIGUSR1) -> None:
        self._log = log
        self._reactor = reactor
        self._signum = signum
        self._previous: _Handler = None

    def startService(self) -> None:
        Service.startService(self)
        self._previous = signal.signal(self._signum, self._handle)

    def stopService(self) -> None:
        Service.stopService(self)
        if signal.getsignal(self._signum) == self._handle:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._log.reopen)
        if callable(self._previous):
            self._previous(signum, frame)
