"""
Several upstreams: each with its health and its passive outlier detection
(L{Ejection}), a L{Balancer} that picks one for each try, and the
L{RequestRouter} that one request's retry loop sends its tries through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from ._classify import TryFailure
from ._config import ProxyConfig, base_of
from ._health import HealthState
from ._metrics import Telemetry

#: The longest cool-down of a repeatedly ejected upstream.
MAX_EJECT_TIME = 300.0


@define
class Ejection:
    """
    Passive outlier detection for one upstream: after C{eject_after}
    consecutive failed tries (connection failures, timeouts or 5xx answers) it
    is ejected for a cool-down that doubles with each repeated ejection (up to
    L{MAX_EJECT_TIME}); after the cool-down one probe at a time is let
    through, and a successful probe (or health check) lets it back.

    @ivar eject_after: consecutive failures that eject; 0 disables ejection.
    @ivar eject_time: the first cool-down, in seconds.
    """

    _clock: IReactorTime
    eject_after: int = 5
    eject_time: float = 30.0
    consecutive: int = 0
    ejections: int = 0
    ejected_at: float | None = None
    ejected_until: float | None = None
    probing: bool = False

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
        if self.in_probation():
            self.probing = True

    def succeeded(self) -> None:
        """
        A try got a non-5xx answer (or a health check passed after the cool-down).
        """
        self.consecutive = 0
        if self.in_probation():
            self.ejected_until = None
            self.probing = False

    def failed(self) -> None:
        """
        A try failed or got a 5xx answer.
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
        self.consecutive = 0
        self.probing = False


@define(eq=False)
class Upstream:
    """
    One backend: its base URL, its health and its ejection state.

    @ivar url: the base URL as configured, for messages.
    @ivar base: origin and base path as bytes, the forwarded URL's start.
    @ivar health: its health state, or L{None} without health checks.
    @ivar in_flight: tries under way to it now.
    """

    url: str
    base: bytes
    health: HealthState | None
    ejection: Ejection
    in_flight: int = 0

    def snapshot(self) -> dict[str, Any]:
        """
        Its state for the status page.
        """
        health = self.health
        return {
            "url": self.url,
            "health": "unknown" if health is None else health.status.value,
            "reason": "" if health is None else health.reason,
            "ejected": self.ejection.ejected,
            "cooldownLeft": self.ejection.cooldown_left(),
            "inFlight": self.in_flight,
            "timeline": [] if health is None else list(health.history),
        }

    def available(self) -> bool:
        """
        Whether a new request may be sent here.
        """
        health = self.health
        if health is not None and health.down:
            return False
        ejection = self.ejection
        if ejection.in_probation() and not ejection.probing and _checked_since(health, ejection):
            ejection.succeeded()  # a health check passed after the cool-down
        return not ejection.ejected


def _checked_since(health: HealthState | None, ejection: Ejection) -> bool:
    if health is None or health.checked_at is None or ejection.ejected_until is None:
        return False
    return health.checked_at >= ejection.ejected_until and not health.down


@define
class Balancer:
    """
    Picks an upstream for each try: round robin, or the one with the fewest
    tries in flight.
    """

    upstreams: Sequence[Upstream]
    least_in_flight: bool = False
    _next: int = field(default=0, init=False)

    def choose(self, avoid: Sequence[Upstream] = ()) -> Upstream | None:
        """
        @return: an available upstream, preferring those not in C{avoid}; or
            L{None} when none is available.
        """
        available = [u for u in self.upstreams if u.available()]
        if not available:
            return None
        fresh = [u for u in available if u not in avoid] or available
        return self._pick(fresh)

    def choose_for_retry(self, avoid: Sequence[Upstream]) -> Upstream:
        """
        Like L{choose}, but a request under way keeps its tries: with nothing
        available, any upstream not yet tried (else the last one) is used.
        """
        chosen = self.choose(avoid)
        if chosen is not None:
            return chosen
        untried = [u for u in self.upstreams if u not in avoid]
        return self._pick(untried) if untried else avoid[-1]

    def _pick(self, candidates: list[Upstream]) -> Upstream:
        if self.least_in_flight:
            start = self._next % len(candidates)
            ordered = candidates[start:] + candidates[:start]
            self._next += 1
            return min(ordered, key=lambda u: u.in_flight)
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


def balancer_for(config: ProxyConfig, clock: IReactorTime, healths: Sequence[HealthState | None]) -> Balancer:
    """
    The upstreams of C{config}, each with its health (from C{healths}, in
    order; L{None} without checks) and a fresh L{Ejection}, in a L{Balancer}.
    """
    upstreams = [
        Upstream(url, base_of(url), health, Ejection(clock, config.eject_after, config.eject_time))
        for url, health in zip(config.upstreams, healths, strict=True)
    ]
    return Balancer(upstreams, least_in_flight=config.balance == "least-in-flight")


@define
class RequestRouter:
    """
    Sends one request's tries, each to an upstream the balancer picks (a
    retry to another upstream where one is available), and reports each
    try's outcome to that upstream's health and ejection state.
    """

    _balancer: Balancer
    _agent: IAgent
    _method: bytes
    _rest: bytes
    _headers: Headers
    _body: IBodyProducer | None
    first: Upstream
    _telemetry: Telemetry | None = None
    _clock: IReactorTime | None = None
    tried: list[Upstream] = field(factory=list, init=False)
    _sent_at: float = field(default=0.0, init=False)

    @property
    def current(self) -> Upstream:
        """
        The upstream of the latest try (the first one before any try).
        """
        return self.tried[-1] if self.tried else self.first

    def send(self) -> Deferred[IResponse]:
        """
        Send the next try.
        """
        upstream = self.first if not self.tried else self._balancer.choose_for_retry(self.tried)
        if self.tried and self._telemetry is not None:
            self._telemetry.retried(upstream.url)
        self.tried.append(upstream)
        if self._clock is not None:
            self._sent_at = self._clock.seconds()
        upstream.ejection.start_probe()
        upstream.in_flight += 1
        sent: Deferred[IResponse] = self._agent.request(
            self._method, upstream.base + self._rest, self._headers, self._body
        )

        def release(result: object) -> object:
            upstream.in_flight -= 1
            return result

        return sent.addBoth(release)

    def succeeded(self, response: IResponse) -> None:
        """
        The latest try got C{response}.
        """
        upstream = self.current
        self._record(upstream, "5xx" if response.code >= 500 else "ok")
        if upstream.health is not None:
            upstream.health.try_succeeded()
        if response.code >= 500:
            upstream.ejection.failed()
        else:
            upstream.ejection.succeeded()

    def failed(self, failure: TryFailure) -> None:
        """
        The latest try failed.
        """
        upstream = self.current
        self._record(upstream, failure.kind.error_type)
        if upstream.health is not None:
            upstream.health.try_failed(failure)
        upstream.ejection.failed()

    def _record(self, upstream: Upstream, outcome: str) -> None:
        if self._telemetry is not None and self._clock is not None:
            seconds = self._clock.seconds() - self._sent_at
            self._telemetry.try_finished(upstream.url, outcome, seconds)

    def cancelled(self) -> None:
        """
        The client went away: an ejected upstream's probe is given back.
        """
        self.current.ejection.probing = False
