"""
L{ProxyParts}: the collaborators of a L{sora2proxy.forward._resource.ProxyResource}
in one value, which C{build_proxy} assembles from a configuration (a test
assembles its own, with fakes where it needs them).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

from attrs import field, frozen
from attrs.validators import instance_of, optional
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.web.iweb import IAgent, IAgentEndpointFactory

from .._config import ProxyConfig
from ..http._deadlines import Deadlines
from ..idempotency._guard import IdempotencyGuard
from ..limits._gate import Limits
from ..resilience._budget import RetryBudget
from ..resilience._upstreams import Balancer
from ._messages import SpawnedChild
from ._seams import AccessSink, RequestTelemetry


@frozen
class ProxyParts:
    """
    What a proxy resource forwards with.

    @ivar config: the proxy's configuration.
    @ivar clock: the reactor's time, for timeouts and backoff.
    @ivar agent: the HTTP client that sends tries upstream.
    @ivar balancer: the upstreams, each with its health and ejection state.
    @ivar budget: the retry budget shared by all requests.
    @ivar cooperator: schedules the writing of large request bodies
        (L{body_cooperator}).
    @ivar telemetry: told of each request and try (metrics, status board).
    @ivar access: where access lines go.
    @ivar random: random numbers in [0, 1) for backoff jitter.
    @ivar endpoints: where WebSocket tunnels connect; without it a WebSocket
        upgrade is answered 501.
    @ivar guard: Idempotency-Key handling; L{None} passes keys through.
    @ivar children: the C{--spawn} children, named in errors when one exited.
    @ivar limits: C{--rate-limit} and C{--max-concurrent}; L{None} without rules.
    @ivar deadlines: where every try's timeout is armed, one C{DelayedCall}
        between them (stopped with the proxy); L{None}: each retry loop
        its own.
    """

    config: ProxyConfig = field(validator=instance_of(ProxyConfig))
    clock: IReactorTime
    agent: IAgent
    balancer: Balancer = field(validator=instance_of(Balancer))
    budget: RetryBudget = field(validator=instance_of(RetryBudget))
    cooperator: Cooperator = field(validator=instance_of(Cooperator))
    telemetry: RequestTelemetry
    access: AccessSink
    random: Callable[[], float] = _random.random
    endpoints: IAgentEndpointFactory | None = None
    guard: IdempotencyGuard | None = field(default=None, validator=optional(instance_of(IdempotencyGuard)))
    children: Sequence[SpawnedChild] = ()
    limits: Limits | None = field(default=None, validator=optional(instance_of(Limits)))
    deadlines: Deadlines | None = field(default=None, validator=optional(instance_of(Deadlines)))


def body_cooperator(clock: IReactorTime) -> Cooperator:
    """
    @return: a cooperator that writes large request bodies a piece per turn
        of C{clock}'s reactor, for L{ProxyParts.cooperator}.
    """
    return Cooperator(scheduler=lambda work: clock.callLater(0, work), started=True)
