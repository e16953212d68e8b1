"""
Several upstreams: each with its health and its passive outlier detection
(L{sora2proxy.resilience._ejection.Ejection}), a L{Balancer} that picks one for each try, the
L{RequestRouter} that one request's retry loop sends its tries through, and
L{serving_state}, the one word that C{/ready}, C{/status.json} and the status
page agree on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from .._config import ProxyConfig, base_of
from ._classify import TryFailure
from ._ejection import GATEWAY_FAILURES, Ejection
from ._health import HISTORY, HealthState
from ._observers import TryObserver

#: The words of L{serving_state}.
SERVING, DEGRADED, NOT_READY = "serving", "degraded", "not ready"


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
        upstreams = self.upstreams
        if len(upstreams) == 1:  # the common case: usable() of one is it when passing
            only = upstreams[0]
            return only if only.passing() else None
        candidates = usable(upstreams)
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
    pairs = zip(config.upstreams, healths, strict=True)
    upstreams = [upstream_for(config, clock, url, health) for url, health in pairs]
    return Balancer(upstreams, least_in_flight=config.balance == "least-in-flight")


def upstream_for(config: ProxyConfig, clock: IReactorTime, url: str, health: HealthState | None) -> Upstream:
    """
    The upstream at C{url}, with C{health} and a fresh L{Ejection} that a
    passing health check ends.
    """
    ejection = Ejection(clock, config.eject_after, config.eject_time, url)
    if health is not None:
        health.on_pass.append(ejection.health_check_passed)
    return Upstream(url, base_of(url), health, ejection)


@define
class RequestRouter:
    """
    Sends one request's tries, each to an upstream the balancer picks (a
    retry to another upstream where one is available), and reports each
    try's outcome to that upstream's health and ejection state.

    A try counts in its upstream's C{in_flight} from L{send} until its
    outcome is told: L{succeeded}, L{failed}, L{abandoned}, or L{cancelled}
    while it is under way.

    @ivar current: the upstream of the latest try (the first one before any try).
    """

    _balancer: Balancer
    _agent: IAgent
    _method: bytes
    _rest: bytes
    _headers: Headers
    _body: IBodyProducer | None
    current: Upstream = field(alias="first")  # the first try's until it is sent
    _telemetry: TryObserver | None = None
    _clock: IReactorTime | None = None
    tried: list[Upstream] = field(factory=list, init=False)
    _sent_at: float = field(default=0.0, init=False)
    _flying: bool = field(default=False, init=False)

    def send(self) -> Deferred[IResponse]:
        """
        Send the next try.
        """
        tried = self.tried
        upstream = self.current
        if tried:
            upstream = self.current = self._balancer.choose_for_retry(tried)
            if self._telemetry is not None:
                self._telemetry.retried(upstream.url)
        tried.append(upstream)
        if self._clock is not None:
            self._sent_at = self._clock.seconds()
        upstream.ejection.start_probe()
        upstream.in_flight += 1
        self._flying = True
        return self._agent.request(self._method, upstream.base + self._rest, self._headers, self._body)

    def _release(self) -> Upstream:
        upstream = self.current
        if self._flying:
            self._flying = False
            upstream.in_flight -= 1
        return upstream

    def succeeded(self, response: IResponse) -> None:
        """
        The latest try got C{response}.
        """
        upstream = self.current
        if self._flying:  # as _release() does, without the call (once per request)
            self._flying = False
            upstream.in_flight -= 1
        code = response.code
        self._record(upstream, "5xx" if code >= 500 else "ok")
        if upstream.health is not None:
            upstream.health.try_succeeded()
        if code in GATEWAY_FAILURES:
            upstream.ejection.failed()
        else:
            upstream.ejection.succeeded()  # a 500 is the application's answer, not the host's state

    def failed(self, failure: TryFailure) -> None:
        """
        The latest try failed (refused, reset, timed out, invalid response):
        a gateway failure.
        """
        upstream = self._release()
        self._record(upstream, failure.kind.error_type)
        if upstream.health is not None:
            upstream.health.try_failed(failure)
        upstream.ejection.failed()

    def abandoned(self) -> None:
        """
        The latest try ended with no outcome to record (a bug, not the upstream's doing).
        """
        self._release()

    def _record(self, upstream: Upstream, outcome: str) -> None:
        if self._telemetry is not None and self._clock is not None:
            seconds = self._clock.seconds() - self._sent_at
            self._telemetry.try_finished(upstream.url, outcome, seconds)

    def cancelled(self) -> None:
        """
        The client went away: the try under way, if any, is given up, and
        an ejected upstream's probe is given back.
        """
        self._release().ejection.probing = False
