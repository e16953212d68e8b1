"""
Assembly for embedding: L{build_proxy} wires a L{ProxyConfig} into a
resource to serve and a service to start (health monitor, connection pool).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
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
from .http._endpoints import UpstreamEndpoints, tls_policy
from .http._refusal import RefusalListener
from .idempotency._guard import IdempotencyGuard
from .idempotency._memory import MemoryStore
from .idempotency._store import IdempotencyStore, redis_store
from .ops._access_log import FileSink, access_sink
from .ops._metrics import Telemetry
from .resilience._budget import RetryBudget
from .resilience._health import HealthMonitor, HealthState
from .resilience._upstreams import Balancer, balancer_for

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
    access: AccessSink | None = None

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
    longest = config.deadline or config.attempts * (config.timeout + config.max_backoff)
    guard = IdempotencyGuard(
        store,
        clock,
        ttl=config.idempotency_ttl,
        in_flight_ttl=longest + 60,
        max_body=config.idempotency_max_body,
        fail_closed=config.idempotency_fail_closed,
        required=config.require_idempotency_key,
    )
    telemetry.watch_idempotency(guard)
    return guard


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
    balancer = _watched_upstreams(config, clock, agent, telemetry, service)
    budget = RetryBudget(clock, config.retry_budget)
    guard = idempotency_guard(config, clock, telemetry)
    access = _access_log(config, clock, service)
    parts = ProxyParts(
        config,
        clock,
        agent,
        balancer,
        budget,
        body_cooperator(clock),
        telemetry,
        access,
        random=random or _random.random,
        endpoints=endpoints,
        guard=guard,
        children=children,
    )
    refusals = RefusalLog(telemetry, access, config.upstream)
    return Proxy(ProxyResource(parts), service, balancer, telemetry, refusals, access)


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


def _watched_upstreams(
    config: ProxyConfig, clock: IReactorTime, agent: IAgent, telemetry: Telemetry, service: MultiService
) -> Balancer:
    """
    The upstreams of C{config}, each with its health monitor (a child of
    C{service}) where checks are on, their ejections exported as metrics.
    """
    healths: list[HealthState | None] = []
    for url in config.upstreams:
        health: HealthState | None = None
        health_url = config.health_url_of(url)
        if health_url is not None:
            health = HealthState(clock, url)
            monitor = HealthMonitor(
                health, clock, agent, health_url, config.health_interval, config.health_timeout, telemetry
            )
            monitor.setServiceParent(service)  # type: ignore[no-untyped-call]
        healths.append(health)
    balancer = balancer_for(config, clock, healths)
    telemetry.watch_ejections(lambda: [(u.url, u.ejection.ejected) for u in balancer.upstreams])
    telemetry.watch_health(lambda: [(u.url, u.snapshot()["health"]) for u in balancer.upstreams])
    return balancer


def _access_log(config: ProxyConfig, clock: IReactorTime, service: MultiService) -> AccessSink:
    """
    The sink of C{--access-log}; a file's is a child of C{service}, which
    flushes and closes it at stop.
    """
    access = access_sink(config, clock)
    if isinstance(access, FileSink):
        access.setServiceParent(service)  # type: ignore[no-untyped-call]
    return access
