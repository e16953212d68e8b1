"""
Test helpers: real upstreams on loopback, a proxy on loopback, and an
in-memory harness on a Clock.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import attrs
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.forward._parts import ProxyParts, body_cooperator
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.http._site import ProxySite
from sora2proxy.ops._access_log import access_sink
from sora2proxy.ops._metrics import Telemetry
from sora2proxy.resilience._budget import RetryBudget
from sora2proxy.resilience._health import HealthState
from sora2proxy.resilience._upstreams import balancer_for

reactor: Any = _reactor


@attrs.define
class Seen:
    """One request as the upstream received it."""

    method: bytes
    uri: bytes
    headers: Headers
    body: bytes


class RecordingUpstream(Resource):
    """
    An upstream that records every request and answers from C{behaviour}:
    C{"echo"} (200 JSON), C{"status:N"}, C{"hang"}, C{"reset"}, C{"close"}.
    """

    isLeaf = True

    def __init__(self, behaviour: str = "echo", health: str = "ok") -> None:
        super().__init__()
        self.behaviour = behaviour
        self.health = health
        self.seen: list[Seen] = []
        self.health_checks = 0
        self.hanging: list[Request] = []
        self.lost: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        if request.path.endswith(b"/health"):
            self.health_checks += 1
            if self.health == "ok":
                return b'{"status":"ok"}'
            request.setResponseCode(503)
            return b'{"status":"down"}'
        self.seen.append(Seen(request.method, request.uri, request.requestHeaders.copy(), body))
        behaviour = self.behaviour
        if behaviour == "hang":
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: self.lost.append(request))
            return NOT_DONE_YET
        if behaviour == "reset":
            request.transport.abortConnection()
            return NOT_DONE_YET
        if behaviour == "close":
            request.transport.loseConnection()
            return NOT_DONE_YET
        if behaviour.startswith("status:"):
            request.setResponseCode(int(behaviour.split(":")[1]))
            request.setHeader(b"content-type", b"application/json")
            return b'{"from":"upstream"}'
        request.setHeader(b"content-type", b"application/json")
        request.responseHeaders.addRawHeader(b"set-cookie", b"a=1; Path=/")
        request.responseHeaders.addRawHeader(b"set-cookie", b"b=2; Path=/")
        answer = {
            "method": request.method.decode(),
            "uri": request.uri.decode("latin-1"),
            "body": body.decode("latin-1"),
        }
        return json.dumps(answer).encode()


class CountingSite(Site):
    """A site that counts the TCP connections it accepted."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


def refused_port() -> int:
    """A loopback port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class LoopbackMixin:
    """
    For trial C{TestCase}s that run a real upstream and the proxy on loopback.
    """

    def start_upstream(self, resource: Resource) -> tuple[CountingSite, str]:
        site = CountingSite(resource)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return site, f"http://127.0.0.1:{port.getHost().port}/api"

    def start_proxy(self, budget: RetryBudget | None = None, **options: Any) -> tuple[str, Any]:
        """
        Serve a proxy of C{options} on loopback: its URL and the proxy.

        @param budget: replaces the proxy's retry budget (one on a C{Clock}
            that stands still keeps a whole test run in one window).
        """
        config = ProxyConfig(**options)
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        resource = proxy.resource
        if budget is not None:
            resource = ProxyResource(attrs.evolve(resource.parts, budget=budget))
        site = ProxySite(resource, config, refusals=proxy.refusals)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(proxy.service.stopService)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port.getHost().port}", proxy

    def client(self) -> Agent:
        pool = HTTPConnectionPool(reactor, persistent=False)
        return Agent(reactor, pool=pool)

    @inlineCallbacks
    def fetch(
        self, method: bytes, url: str | bytes, body: bytes | None = None, headers: Headers | None = None
    ) -> Any:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        raw = url.encode() if isinstance(url, str) else url
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response: IResponse = yield self.client().request(method, raw, headers or Headers(), producer)
        content = yield readBody(response)
        return response, content


def json_of(content: bytes) -> Any:
    return json.loads(content.decode("utf-8"))


def wait(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def eventually(
    check: Any, timeout: float = 10.0, what: str = "the condition", interval: float = 0.005
) -> Any:
    """
    Wait, letting the reactor run (polling every C{interval} seconds), until
    C{check()} gives a true value (it may return a Deferred); fail the test
    after C{timeout} seconds.  For a test over sockets that waits for an
    event (a line written, a connection closed, a health check seen) rather
    than for a fixed time.

    @return: a Deferred firing with the true value C{check} gave.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = yield maybeDeferred(check)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s: {check} gave {result!r}")
        yield wait(interval)


def parts_for(
    config: ProxyConfig, clock: Any, agent: Any, health: HealthState | None = None, **given: Any
) -> ProxyParts:
    """
    The collaborators of a L{ProxyResource} made for a test, without
    C{build_proxy}'s services: C{health} is the first upstream's (none:
    no health checks), the telemetry is new, access lines go where
    C{--access-log} says; C{given} replaces any of them (C{endpoints},
    C{guard}, C{children}...).
    """
    healths = [health] + [None] * (len(config.upstreams) - 1)
    made: dict[str, Any] = {
        "balancer": balancer_for(config, clock, healths),
        "budget": RetryBudget(clock, config.retry_budget),
        "cooperator": body_cooperator(clock),
        "telemetry": Telemetry(clock),
        "access": access_sink(config, clock),
    }
    return ProxyParts(config=config, clock=clock, agent=agent, **(made | given))


class MemoryHarness:
    """
    The proxy resource on a Clock, its upstream a twisted.web resource behind
    a L{RequestTraversalAgent}, its clients a L{StubTreq}: no sockets.
    """

    def __init__(self, upstream: Resource, health: bool = False, **options: Any) -> None:
        options.setdefault("upstream", "http://backend.test:3101/api")
        self.config = ProxyConfig(**options)
        self.clock = Clock()
        self.upstream_agent = RequestTraversalAgent(upstream)
        self.health = HealthState(self.clock, self.config.upstream) if health else None
        self.parts = parts_for(self.config, self.clock, self.upstream_agent, self.health)
        self.resource = ProxyResource(self.parts)
        self.client = StubTreq(self.resource)

    def flush(self) -> None:
        for _ in range(5):
            self.upstream_agent.flush()
            self.client.flush()
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()


class RecordingChannel:
    """A channel that records what a request writes to it (and, as a site's channel, tells it)."""

    def __init__(self, site: Any = None) -> None:
        self.calls: list[Any] = []
        self.transport = StringTransport()
        self.site = site

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        self.calls.append(("head", version, code, reason, list(headers.getAllRawHeaders())))

    def write(self, data: bytes) -> None:
        self.calls.append(("body", data))

    def writeSequence(self, data: list[bytes]) -> None:
        self.calls.append(("body", b"".join(data)))

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()


class InertReadControl:
    """
    A response's L{sora2proxy.http._upstream_response.ReadControl} that does nothing.
    """

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class Silent(Protocol):
    pass


__all__ = ["succeed"]
