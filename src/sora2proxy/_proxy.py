"""
Assembly for embedding: L{build_proxy} wires a L{ProxyConfig} into a
resource to serve and a service to start (health monitor, connection pool).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from attrs import define, field, frozen
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from ._config import ProxyConfig
from .forward._messages import SpawnedChild
from .forward._parts import ProxyParts, body_cooperator
from .forward._refused import RefusalLog
from .forward._resource import ProxyResource
from .forward._seams import AccessSink
from .http._client import UpstreamClient
from .http._deadlines import Deadlines
from .http._endpoints import UpstreamEndpoints, tls_policy
from .http._refusal import RefusalListener
from .idempotency._guard import IdempotencyGuard
from .idempotency._memory import MemoryStore
from .idempotency._store import IdempotencyStore, redis_store
from .limits._gate import Limits
from .limits._redis import redis_limit_store
from .limits._store import LimitStore, MemoryLimitStore
from .ops._access_log import FileSink, access_sink
from .ops._metrics import Telemetry
from .ops._reload import Reloadable
from .resilience._budget import RetryBudget
from .resilience._health import HealthMonitor, HealthState
from .resilience._upstreams import Balancer, Upstream, upstream_for

#: Idle upstream connections kept per host: enough for the concurrency of a
#: busy process (Twisted's default, 2, opens a new connection per request).
POOL_SIZE = 256


@frozen
class Proxy:
    """
    A proxy ready to embed.

    @ivar resource: serve it from a L{twisted.web.server.Site} (as the root,
        or a leaf at the configured prefix).
    @ivar service: start it (health monitor) and stop it (closes pooled
        connections), for instance as a child of the application's service.
    @ivar balancer: the upstreams, each with its health and ejection state.
    @ivar telemetry: metrics, in-flight count and status board (for an admin page).
    @ivar access: where the access lines go (C{--access-log}).
    @ivar refusals: give it to the L{ProxySite} that serves C{resource}: the
        requests the site refuses before C{resource} sees them (malformed
        heads, bodies too large) are then logged and counted as the others.
    """

    resource: IResource
    service: IService
    balancer: Balancer
    telemetry: Telemetry
    refusals: RefusalListener | None = None
    reloadables: tuple[Reloadable, ...] = ()
    access: AccessSink | None = None

    def reconfigure(self, config: ProxyConfig) -> None:
        """
        Forward new requests with C{config} (upstreams, retries, timeouts,
        limits, Idempotency-Key rules); requests in flight finish with the
        configuration they started with.  The fields that
        L{sora2proxy.ops._reload.RELOADABLE} does not name are not applied.
        """
        for part in self.reloadables:
            part.reconfigure(config)

    @property
    def health(self) -> HealthState | None:
        """
        The first upstream's health, or L{None} with checks off.
        """
        return self.balancer.upstreams[0].health


class _PoolService(Service):
    """
    Closes the pooled upstream connections when stopped.
    """

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self._client.close_idle()


def _shared_deadlines(clock: IReactorTime, service: MultiService) -> Deadlines:
    """
    The deadlines every try's timeout shares, their call cancelled when
    C{service} stops.
    """
    deadlines = Deadlines(clock)
    _DeadlinesService(deadlines).setServiceParent(service)  # type: ignore[no-untyped-call]
    return deadlines


class _DeadlinesService(Service):
    """
    Cancels the tries' shared deadline call when stopped (no DelayedCall
    left in the reactor).
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines

    def stopService(self) -> None:
        Service.stopService(self)
        self._deadlines.stop()


def idempotency_guard(
    config: ProxyConfig, clock: IReactorTime, telemetry: Telemetry
) -> IdempotencyGuard | None:
    """
    The Idempotency-Key guard of C{config}, its metrics and status registered;
    L{None} with C{--idempotency-store off}.
    """
    if config.idempotency_store == "off":
        return None
    store: IdempotencyStore
    if config.idempotency_store == "memory":
        store = MemoryStore(
            clock,
            config.idempotency_max_entries,
            config.idempotency_max_bytes,
            config.idempotency_max_per_caller,
        )
    else:
        store = redis_store(
            config.idempotency_store,
            max_per_caller=config.idempotency_max_per_caller,
            answer_ttl=config.idempotency_ttl,
        )
    guard = IdempotencyGuard(
        store,
        clock,
        ttl=config.idempotency_ttl,
        in_flight_ttl=_longest(config) + 60,
        max_body=config.idempotency_max_body,
        fail_closed=config.idempotency_fail_closed,
        required=config.require_idempotency_key,
    )
    telemetry.watch_idempotency(guard)
    return guard


def rate_limits(config: ProxyConfig, clock: IReactorTime, telemetry: Telemetry) -> Limits | None:
    """
    The C{--rate-limit} and C{--max-concurrent} gate of C{config}, its
    metrics and status registered; L{None} without rules (the default).
    """
    if not config.rate_limit and not config.max_concurrent:
        return None
    store: LimitStore = MemoryLimitStore(clock)
    if config.rate_limit_store != "memory":
        store = redis_limit_store(config.rate_limit_store)
    limits = Limits.of(
        store,
        clock,
        config.rate_limit,
        config.max_concurrent,
        slot_ttl=_longest(config) + 60,  # a slot of a proxy that died expires
        fail_closed=config.rate_limit_fail_closed,
    )
    telemetry.watch_limits(limits)
    return limits


def build_proxy(
    config: ProxyConfig,
    reactor: Any,
    agent: IAgent | None = None,
    random: Callable[[], float] | None = None,
    children: Sequence[SpawnedChild] = (),
) -> Proxy:
    """
    Build the proxy described by C{config}.

    @param reactor: the reactor (time and TCP) that the proxy runs on.
    @param agent: the HTTP client for upstream requests; by default a
        L{UpstreamClient} (persistent, pooled) on C{reactor}.
    @param random: the random source of backoff jitter (numbers in [0, 1)).
    @param children: the C{--spawn} children that run the backend (their
        exits are named in errors); see L{SpawnedChild}.
    """
    clock: IReactorTime = reactor
    telemetry = Telemetry(clock)
    service = MultiService()
    endpoints = UpstreamEndpoints(reactor, tls_policy(config.upstream_ca))
    if agent is None:
        agent = _pooled_client(config, clock, endpoints, service)
    upstreams = _LiveUpstreams(config, clock, agent, telemetry, service)
    balancer = upstreams.balancer
    guard = idempotency_guard(config, clock, telemetry)
    access = _access_log(config, clock, service)
    parts = ProxyParts(
        config,
        clock,
        agent,
        balancer,
        RetryBudget(clock, config.retry_budget),
        body_cooperator(clock),
        telemetry,
        access,
        random=random or _random.random,
        endpoints=endpoints,
        guard=guard,
        children=children,
        limits=rate_limits(config, clock, telemetry),
        deadlines=_shared_deadlines(clock, service),
    )
    refusals = RefusalLog(telemetry, access, config.upstream)
    resource = ProxyResource(parts)
    # What a reload changes, in order; a new component that takes a reload
    # (a Reloadable: reconfigure(config)) is added here, before the parts swap.
    live = _LiveParts(resource, lambda config: rate_limits(config, clock, telemetry))
    reloadables: tuple[Reloadable, ...] = (upstreams, live)
    return Proxy(resource, service, balancer, telemetry, refusals, reloadables, access)


def _pooled_client(
    config: ProxyConfig, clock: IReactorTime, endpoints: UpstreamEndpoints, service: MultiService
) -> UpstreamClient:
    """
    The default HTTP client: persistent, pooled, its idle connections
    closed when C{service} stops.
    """
    # Never retries by itself: every retry is the retry loop's own, counted and policed there.
    client = UpstreamClient(clock, endpoints, max_idle=POOL_SIZE, idle_timeout=config.upstream_idle_timeout)
    _PoolService(client).setServiceParent(service)  # type: ignore[no-untyped-call]
    return client


@define
class _LiveUpstreams:
    """
    The upstreams of the configuration in use, in one L{Balancer}, each
    with its health monitor (a child of C{service}) where checks are on;
    their ejections and health exported as metrics.
    """

    _config: ProxyConfig
    _clock: IReactorTime
    _agent: IAgent
    _telemetry: Telemetry
    _service: MultiService
    balancer: Balancer = field(init=False)
    _monitors: dict[str, HealthMonitor] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        config = self._config
        upstreams = [self._upstream(config, url) for url in config.upstreams]
        balancer = self.balancer = Balancer(upstreams, least_in_flight=config.balance == "least-in-flight")
        self._telemetry.watch_ejections(lambda: [(u.url, u.ejection.ejected) for u in balancer.upstreams])
        self._telemetry.watch_health(lambda: [(u.url, u.snapshot()["health"]) for u in balancer.upstreams])

    def _upstream(self, config: ProxyConfig, url: str) -> Upstream:
        health: HealthState | None = None
        health_url = config.health_url_of(url)
        if health_url is not None:
            health = HealthState(self._clock, url)
            monitor = HealthMonitor(
                health,
                self._clock,
                self._agent,
                health_url,
                config.health_interval,
                config.health_timeout,
                self._telemetry,
            )
            monitor.setServiceParent(self._service)  # type: ignore[no-untyped-call]
            self._monitors[url] = monitor
        return upstream_for(config, self._clock, url, health)

    def reconfigure(self, config: ProxyConfig) -> None:
        """
        Use the upstreams of C{config}: one kept (its health and ejection
        state with it) where its URL and its checks are unchanged, else
        built anew; the monitors of the others stop.  A request in flight
        keeps the upstream it was sent to.
        """
        checks = ("health_path", "health_interval", "health_timeout", "eject_after", "eject_time")
        same = all(getattr(self._config, name) == getattr(config, name) for name in checks)
        old = {u.url: u for u in self.balancer.upstreams}
        kept = {url: old[url] for url in config.upstreams if same and url in old}
        for url in old.keys() - kept.keys():
            monitor = self._monitors.pop(url, None)
            if monitor is not None:
                monitor.disownServiceParent()  # type: ignore[no-untyped-call]
        upstreams = [kept.get(url) or self._upstream(config, url) for url in config.upstreams]
        self.balancer.upstreams = upstreams
        self.balancer.least_in_flight = config.balance == "least-in-flight"
        self._config = config


@define
class _LiveParts:
    """
    The resource's parts, swapped by a reload (new requests read them when
    they start): the configuration, the budget's and guard's settings.
    """

    _resource: ProxyResource
    _new_limits: Callable[[ProxyConfig], Limits | None]
    _gate: Limits | None = field(default=None, init=False)

    def reconfigure(self, config: ProxyConfig) -> None:
        parts = self._resource.parts
        parts.budget.fraction = config.retry_budget
        guard = parts.guard
        if guard is not None:
            guard.ttl = config.idempotency_ttl
            guard.in_flight_ttl = _longest(config) + 60
            guard.max_body = config.idempotency_max_body
            guard.fail_closed = config.idempotency_fail_closed
            guard.required = config.require_idempotency_key
        self._resource.reconfigure(
            attrs.evolve(parts, config=config, limits=self._limits(parts.limits, config))
        )

    def _limits(self, limits: Limits | None, config: ProxyConfig) -> Limits | None:
        # One gate for the proxy's life (its metrics are registered once):
        # made at the first rule, its rules replaced after; None without rules.
        self._gate = limits or self._gate
        if not config.rate_limit and not config.max_concurrent:
            return None
        if self._gate is None:
            self._gate = self._new_limits(config)
            return self._gate
        slot_ttl = _longest(config) + 60
        self._gate.reconfigure(
            config.rate_limit, config.max_concurrent, slot_ttl, config.rate_limit_fail_closed
        )
        return self._gate


def _longest(config: ProxyConfig) -> float:
    """
    The longest a request may take, tries and waits included.
    """
    return config.deadline or config.attempts * (config.timeout + config.max_backoff)


def _access_log(config: ProxyConfig, clock: IReactorTime, service: MultiService) -> AccessSink:
    """
    The sink of C{--access-log}; a file's is a child of C{service}, which
    flushes and closes it at stop.
    """
    access = access_sink(config, clock)
    if isinstance(access, FileSink):
        access.setServiceParent(service)  # type: ignore[no-untyped-call]
    return access
