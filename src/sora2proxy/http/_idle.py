"""
L{IdleTimer}: Twisted's L{TimeoutMixin} idle timeout, without moving a
L{DelayedCall} on every read and every answer.

C{TimeoutMixin.resetTimeout} moves its call (C{DelayedCall.reset}) each time
data arrives, and the channel sets the timeout again after each answer: two
moves per keep-alive request, and work for the reactor's timer heap.  Here
activity only notes the time; the one pending call, when it comes before the
deadline (the last activity plus the timeout), arms itself again for the
deadline.  The timeout fires at the moment C{TimeoutMixin}'s would.

This module imports nothing of the package.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.policies import TimeoutMixin


class IdleTimer(TimeoutMixin):
    """
    A L{TimeoutMixin} whose timer is re-armed lazily.  Change the timeout
    with L{setTimeout} (as C{TimeoutMixin} asks), not by setting C{timeOut}.

    @ivar idle_clock: the clock of the timer; L{None} leaves
        C{TimeoutMixin}'s own timer in charge.
    """

    idle_clock: IReactorTime | None = None
    _idle_call: IDelayedCall | None = None
    _idle_since = 0.0  # the last activity
    _idle_period: float | None = None  # the timeout the pending call was armed with

    def resetTimeout(self) -> None:
        clock = self.idle_clock
        if clock is None:
            super().resetTimeout()  # type: ignore[no-untyped-call]
        elif self._idle_call is not None and self.timeOut is not None:
            self._idle_since = clock.seconds()

    def setTimeout(self, period: float | None) -> float | None:
        clock = self.idle_clock
        if clock is None:
            return super().setTimeout(period)  # type: ignore[no-untyped-call,no-any-return]
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]
        call = self._idle_call
        if period is None:
            if call is not None and call.active():
                call.cancel()
            self._idle_call = None
            return previous
        self._idle_since = clock.seconds()
        if call is None:
            self._idle_call = clock.callLater(period, self._idle_check)
            self._idle_period = period
        elif period != self._idle_period:  # perhaps sooner than the pending call: move it
            call.reset(period)
            self._idle_period = period
        # Else the pending call comes at or before the new deadline and arms itself again.
        return previous

    def _idle_check(self) -> None:
        self._idle_call = None
        clock, period = self.idle_clock, self.timeOut
        if clock is None or period is None:
            return
        now = clock.seconds()
        deadline = self._idle_since + period
        if now < deadline:
            # Exactly at the deadline: the call came at least one period
            # after the clock's zero and since the last activity, so
            # deadline <= 2 * now, and deadline - now is exact (Sterbenz).
            self._idle_call = clock.callLater(deadline - now, self._idle_check)
            return
        self.timeoutConnection()  # type: ignore[no-untyped-call]
