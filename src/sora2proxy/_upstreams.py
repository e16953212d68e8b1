"""
Several upstreams: each with its health and its passive outlier detection
(L{Ejection}), a L{Balancer} that picks one for each try, the
L{RequestRouter} that one request's retry loop sends its tries through, and
L{serving_state}, the one word that C{/ready}, C{/status.json} and the status
page agree on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from ._classify import TryFailure
from ._config import ProxyConfig, base_of
from ._health import HISTORY, HealthState
from ._metrics import Telemetry

#: The longest cool-down of a repeatedly ejected upstream.
MAX_EJECT_TIME = 300.0

#: Upstream answers that count toward ejection (Envoy's "gateway errors"):
#: any other status, a 500 included, is the application's answer to one request.
GATEWAY_FAILURES = frozenset({502, 503, 504})

#: The words of L{serving_state}.
SERVING, DEGRADED, NOT_READY = "serving", "degraded", "not ready"


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
        if self.in_probation():
            self.probing = True

    def succeeded(self) -> None:
        """
        A try got an answer that is not a gateway failure.
        """
        self.consecutive = 0
        if self.in_probation():
            self._return("a probe was answered")

    def health_check_passed(self) -> None:
        """
        An active health check passed: an ejection ends now (Envoy's
        C{successful_active_health_check_uneject_host}).
        """
        if self.ejected_until is not None:
            self._return("a health check passed")
        self.consecutive = 0

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
            "timeline": self.timeline(),
        }

    def timeline(self) -> list[tuple[float, str]]:
        """
        Recent (time, state) samples, oldest first: each health check's
        result, C{"ejected"} where the upstream was ejected but not failing
        its health check, and one C{"ejected"} sample when each ejection began.
        """
        ejection = self.ejection
        samples = [] if self.health is None else list(self.health.history)
        marked = [
            (at, "ejected" if status != "down" and ejection.was_ejected(at) else status)
            for at, status in samples
        ]
        marked.extend((start, "ejected") for start, _ in ejection.periods)
        marked.sort(key=lambda sample: sample[0])
        return marked[-HISTORY:]

    def passing(self) -> bool:
        """
        Whether it is not failing its health checks (true without health
        checks, and before the first check ends).
        """
        return self.health is None or not self.health.down

    def in_service(self) -> bool:
        """
        Whether it takes new requests in normal times: passing its health
        checks and not ejected.
        """
        return self.passing() and not self.ejection.ejected


def usable(upstreams: Sequence[Upstream]) -> list[Upstream]:
    """
    The upstreams a new request may go to: those in service; when none is,
    those ejected but still passing their health checks (or without any),
    as Envoy's panic mode ignores ejections rather than answer nothing.
    """
    in_service = [u for u in upstreams if u.in_service()]
    return in_service or [u for u in upstreams if u.passing()]


def serving_state(upstreams: Sequence[Upstream], draining: bool) -> str:
    """
    The one word for the proxy's state, used by C{/ready}, C{/status.json}
    and the status page alike.

    @return: L{SERVING} when every upstream is in service; L{NOT_READY}
        while draining or when no upstream may take a request (each one
        failing its health checks); else L{DEGRADED} (some upstreams out of
        service, or all ejected and served anyway in panic mode).
    """
    if draining or not usable(upstreams):
        return NOT_READY
    if all(u.in_service() for u in upstreams):
        return SERVING
    return DEGRADED


@define
class Balancer:
    """
    Picks an upstream for each try among the L{usable} ones: round robin,
    or the one with the fewest tries in flight.
    """

    upstreams: Sequence[Upstream]
    least_in_flight: bool = False
    _next: int = field(default=0, init=False)

    def choose(self, avoid: Sequence[Upstream] = ()) -> Upstream | None:
        """
        @return: a usable upstream, preferring those not in C{avoid}; or
            L{None} when none is usable.
        """
        candidates = usable(self.upstreams)
        if not candidates:
            return None
        fresh = [u for u in candidates if u not in avoid] or candidates
        return self._pick(fresh)

    def choose_for_retry(self, avoid: Sequence[Upstream]) -> Upstream:
        """
        Like L{choose}, but a request under way keeps its tries: with nothing
        usable, any upstream not yet tried (else the last one) is used.
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
    order; L{None} without checks) and a fresh L{Ejection} that a passing
    health check ends, in a L{Balancer}.
    """
    upstreams = []
    for url, health in zip(config.upstreams, healths, strict=True):
        ejection = Ejection(clock, config.eject_after, config.eject_time, url)
        if health is not None:
            health.on_pass.append(ejection.health_check_passed)
        upstreams.append(Upstream(url, base_of(url), health, ejection))
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
        if response.code in GATEWAY_FAILURES:
            upstream.ejection.failed()
        else:
            upstream.ejection.succeeded()  # a 500 is the application's answer, not the host's state

    def failed(self, failure: TryFailure) -> None:
        """
        The latest try failed (refused, reset, timed out, invalid response):
        a gateway failure.
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
