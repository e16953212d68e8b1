"""
L{RetryBudget}: retries may be at most a fraction of requests over a sliding
window (with a floor per second, so that a quiet service can still retry).
Under a total outage this keeps retry amplification at C{1 + fraction}.
"""

from __future__ import annotations

from collections import deque

from attrs import define, field
from twisted.internet.interfaces import IReactorTime


@define
class RetryBudget:
    """
    A sliding-window retry budget, as Linkerd and Finagle keep one.

    @ivar fraction: retries allowed per request in the window.
    @ivar min_per_second: retries allowed per second of window whatever the traffic.
    @ivar window: seconds of history considered.
    """

    _clock: IReactorTime
    fraction: float = 0.2
    min_per_second: float = 5.0
    window: float = 10.0
    _requests: deque[float] = field(factory=deque, init=False)
    _retries: deque[float] = field(factory=deque, init=False)

    def _prune(self, now: float) -> None:
        _drop_older(self._requests, now - self.window)
        _drop_older(self._retries, now - self.window)

    def record_request(self) -> None:
        """
        A request arrived (its first try is not a retry).
        """
        now = self._clock.seconds()
        requests, oldest = self._requests, now - self.window
        while requests and requests[0] <= oldest:  # _drop_older, inline: once per request
            requests.popleft()
        requests.append(now)  # the retries are pruned when read

    def allow_retry(self) -> bool:
        """
        Ask for one retry; when allowed it is counted against the budget.
        """
        now = self._clock.seconds()
        self._prune(now)
        allowed = max(self.fraction * len(self._requests), self.min_per_second * self.window)
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True

    @property
    def retries_in_window(self) -> int:
        """
        How many retries the window holds now.
        """
        self._prune(self._clock.seconds())
        return len(self._retries)


def _drop_older(times: deque[float], oldest: float) -> None:
    """
    Forget the times of C{times} (oldest first) up to C{oldest}.
    """
    while times and times[0] <= oldest:
        times.popleft()
