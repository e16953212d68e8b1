"""
L{Ejection}: passive outlier detection for one upstream, after Envoy's
C{consecutive_gateway_failure} detector: which failures count, the cool-down
and its doubling, and the ways an ejection ends.
"""

from __future__ import annotations

from collections import deque

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._health import HISTORY

#: The longest cool-down of a repeatedly ejected upstream.
MAX_EJECT_TIME = 300.0

#: Upstream answers that count toward ejection (Envoy's "gateway errors"):
#: any other status, a 500 included, is the application's answer to one request.
GATEWAY_FAILURES = frozenset({502, 503, 504})


@define
class Ejection:
    """
    Passive outlier detection for one upstream: after C{eject_after}
    consecutive gateway failures (refused or reset connections, timeouts,
    invalid responses, 502, 503 or 504 answers) it is ejected for a
    cool-down that doubles with each repeated ejection (up to
    L{MAX_EJECT_TIME}).  A passing health check ends an ejection at once;
    without one, after the cool-down one probe at a time is let through and a
    good answer lets the upstream back.

    @ivar eject_after: consecutive failures that eject; 0 disables ejection.
    @ivar eject_time: the first cool-down, in seconds.
    @ivar upstream: the upstream's URL, for the log.
    @ivar periods: C{[start, end]} of recent ejections, oldest first (the end
        is when the cool-down ends, or when it ended early).
    """

    log = Logger()

    _clock: IReactorTime
    eject_after: int = 5
    eject_time: float = 30.0
    upstream: str = ""
    consecutive: int = 0
    ejections: int = 0
    ejected_at: float | None = None
    ejected_until: float | None = None
    probing: bool = False
    periods: deque[list[float]] = field(factory=lambda: deque(maxlen=HISTORY))

    def cooldown_left(self) -> float:
        """
        Seconds until the cool-down ends (0 when not cooling down).
        """
        if self.ejected_until is None:
            return 0.0
        return max(0.0, self.ejected_until - self._clock.seconds())

    @property
    def ejected(self) -> bool:
        """
        Whether requests must avoid this upstream now.
        """
        if self.ejected_until is None:
            return False
        return self._clock.seconds() < self.ejected_until or self.probing

    def in_probation(self) -> bool:
        """
        Whether the cool-down is over but no probe has succeeded yet.
        """
        return self.ejected_until is not None and self._clock.seconds() >= self.ejected_until

    def start_probe(self) -> None:
        """
        A try is sent to this upstream; after a cool-down it is the probe.
        """
        if self.ejected_until is not None and self.in_probation():  # checked first: no call when not ejected
            self.probing = True

    def succeeded(self) -> None:
        """
        A try got an answer that is not a gateway failure.
        """
        self.consecutive = 0
        if self.ejected_until is not None and self.in_probation():
            self._return("a probe was answered")

    def health_check_passed(self) -> None:
        """
        An active health check passed: an ejection ends now (Envoy's
        C{successful_active_health_check_uneject_host}).
        """
        if self.ejected_until is not None:
            self._return("a health check passed")

    def failed(self) -> None:
        """
        A try failed or got a gateway-failure answer.
        """
        if self.eject_after <= 0:
            return
        if self.in_probation():
            self._eject()
            return
        if self.ejected_until is not None:
            return  # a request already under way: its failure is old news
        self.consecutive += 1
        if self.consecutive >= self.eject_after:
            self._eject()

    def _eject(self) -> None:
        now = self._clock.seconds()
        if self.ejected_at is not None and now - self.ejected_at > 2 * MAX_EJECT_TIME:
            self.ejections = 0  # well behaved for long enough: start over
        self.ejections += 1
        duration = min(MAX_EJECT_TIME, self.eject_time * 2 ** (self.ejections - 1))
        self.ejected_at = now
        self.ejected_until = now + duration
        self.periods.append([now, now + duration])
        self.consecutive = 0
        self.probing = False
        self.log.warn(
            "upstream {upstream} ejected for {seconds:g} s after {failures} gateway failures in a row",
            upstream=self.upstream,
            seconds=duration,
            failures=self.eject_after,
        )

    def _return(self, why: str) -> None:
        now = self._clock.seconds()
        if self.periods:
            self.periods[-1][1] = min(self.periods[-1][1], now)
        self.ejected_until = None
        self.probing = False
        self.log.info("upstream {upstream} is back from ejection: {why}", upstream=self.upstream, why=why)

    def was_ejected(self, at: float) -> bool:
        """
        Whether the upstream was ejected at clock time C{at} (as far as
        L{periods} remembers).
        """
        return any(start <= at < end for start, end in self.periods)
