"""
Deadlines on one clock that share one C{DelayedCall}: arming and disarming
one is a dict operation, and the reactor is touched only when a deadline is
earlier than the call pending, or when that call comes due.  A timeout
armed and disarmed per request (a try's C{--timeout}) so costs no
C{callLater}, no cancel and no heap work in the reactor, while the shared
call waits for the earliest deadline.

This module imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: How early a deadline may run (seconds): a call re-armed for a later
#: deadline is due this much before it, so that float rounding of the
#: reactor's clock never runs a deadline late.
EARLY = 1e-5


class Deadlines:
    """
    Callbacks due at given times, run once each unless disarmed first.
    Deadlines due at the same time run in the order they were armed; one
    that raises is logged and the others still run.

    @param linger: keep the shared call pending when no deadline is armed
        (the proxy's, for the next request); without it the call is
        cancelled as soon as the last deadline is disarmed, as a
        C{DelayedCall} per deadline would be.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, linger: bool = True) -> None:
        self._clock = clock
        self._linger = linger
        self._armed: dict[int, tuple[float, Callable[[], object]]] = {}
        self._count = 0
        self._call: IDelayedCall | None = None
        self._due_at = 0.0

    @property
    def armed(self) -> int:
        """
        How many deadlines are armed.
        """
        return len(self._armed)

    def arm(self, seconds: float, expire: Callable[[], object]) -> int:
        """
        Call C{expire} in C{seconds}, unless L{disarm}ed first.

        @return: the deadline's key, for L{disarm}.
        """
        when = self._clock.seconds() + seconds
        key = self._count = self._count + 1
        self._armed[key] = (when, expire)
        call = self._call
        if call is None:
            self._call = self._clock.callLater(seconds, self._due)
            self._due_at = when
        elif when < self._due_at:
            call.reset(seconds)
            self._due_at = when
        return key

    def disarm(self, key: int) -> None:
        """
        Forget the deadline of C{key} (one that ran or was disarmed: nothing).
        """
        armed = self._armed
        armed.pop(key, None)
        if not armed and not self._linger:
            self.stop()

    def stop(self) -> None:
        """
        Cancel the shared call (the proxy stops); the deadlines armed stay
        armed, and the next L{arm} schedules a call again.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self._call = None
        now = self._clock.seconds()
        ripe = now + 2 * EARLY
        # In the order of their times (a test's clock jumps past several), then as armed.
        for _, key in sorted((when, key) for key, (when, _) in self._armed.items() if when <= ripe):
            entry = self._armed.pop(key, None)
            if entry is None:
                continue  # disarmed by a callback that ran before it
            try:
                entry[1]()
            except Exception:
                self.log.failure("A deadline's callback failed")
        if self._armed:
            earliest = min(when for when, _ in self._armed.values())
            delay = max(0.0, earliest - now - EARLY)
            if self._call is None:
                self._call = self._clock.callLater(delay, self._due)
                self._due_at = now + delay
            elif earliest < self._due_at:
                self._call.reset(delay)
                self._due_at = now + delay
        elif not self._linger:
            self.stop()
