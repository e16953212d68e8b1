"""
Ejection over real loopback sockets, with a 0.5 s health interval: an
application's 500s eject nothing, a burst of 503s ejects the upstream, and
once the backend answers well a passing health check brings requests back
within an interval; the same after the backend is killed and started again
on its port.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.http._site import ProxySite, QuietSite
from sora2proxy.ops._admin import Admin

from .helpers import LoopbackMixin, eventually, json_of, reactor

INTERVAL = 0.5


class Backend(Resource):
    """
    Answers C{app} (a status) to requests, 500 under /boom, and C{health} to
    health checks: a status, or C{"hang"} (never answers).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.app = 200
        self.health: int | str = 200
        self.requests = 0

    def render(self, request: Request) -> bytes | int:
        if request.path.endswith(b"/health"):
            if self.health == "hang":
                return NOT_DONE_YET
            assert isinstance(self.health, int)
            request.setResponseCode(self.health)
            return b"{}"
        self.requests += 1
        request.setResponseCode(500 if b"/boom" in request.path else self.app)
        return b'{"from": "backend"}'


class Killable(Site):
    """A backend site that can be killed (listener closed, every connection cut) and started again on its port."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.protocols: list[Any] = []
        self.listening: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol

    def log(self, request: Any) -> None:
        pass

    def start(self, port: int = 0) -> int:
        self.listening = reactor.listenTCP(port, self, interface="127.0.0.1")
        number: int = self.listening.getHost().port
        return number

    def kill(self) -> Deferred[None]:
        stopped: Deferred[None] = self.listening.stopListening()
        for protocol in self.protocols:
            transport = getattr(protocol._channel, "transport", None)  # twisted.web's wrapper
            if transport is not None and transport.connected:
                transport.abortConnection()
        self.protocols = []
        return stopped


class EjectionOverSockets(LoopbackMixin, TestCase):
    def setup_all(self, **options: Any) -> tuple[Backend, Killable, Any]:
        backend = Backend()
        site = Killable(backend)
        port = site.start()
        self.addCleanup(lambda: site.listening.stopListening())
        config = ProxyConfig(
            upstream=f"http://127.0.0.1:{port}/api",
            health_interval=INTERVAL,
            health_timeout=1,
            backoff=0.01,
            **options,
        )
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)
        public = reactor.listenTCP(0, ProxySite(proxy.resource, config), interface="127.0.0.1")
        self.addCleanup(public.stopListening)
        admin = reactor.listenTCP(
            0, QuietSite(Admin(proxy.telemetry, proxy.balancer).resource()), interface="127.0.0.1"
        )
        self.addCleanup(admin.stopListening)
        self.public = f"http://127.0.0.1:{public.getHost().port}/api/proxy"
        self.admin = f"http://127.0.0.1:{admin.getHost().port}"
        self.upstream = proxy.balancer.upstreams[0]
        return backend, site, proxy

    @inlineCallbacks
    def get(self, path: str = "/a") -> Any:
        response, content = yield self.fetch(b"GET", self.public + path)
        return response, content

    @inlineCallbacks
    def code(self, path: str = "/a") -> Any:
        response, _ = yield self.get(path)
        return response.code

    @inlineCallbacks
    def agree(self, word: str) -> Any:
        """/ready, /status.json and the status page's header all say C{word}."""
        response, content = yield self.fetch(b"GET", self.admin + "/ready")
        self.assertEqual(
            (response.code, json_of(content)["state"]), (503 if word == "not ready" else 200, word)
        )
        _, content = yield self.fetch(b"GET", self.admin + "/status.json")
        self.assertEqual(json_of(content)["state"], word)
        _, page = yield self.fetch(b"GET", self.admin + "/status")
        self.assertIn(f'<small id=state data-state="{word}"'.encode(), page)
        self.assertIn(f'">{word}</small>'.encode(), page)
        return json_of(content)

    @inlineCallbacks
    def ejected(self) -> Any:
        _, content = yield self.fetch(b"GET", self.admin + "/metrics")
        for family in text_string_to_metric_families(content.decode()):
            for sample in family.samples:
                if sample.name == "sora2proxy_upstream_ejected":
                    return sample.value
        raise AssertionError("no sora2proxy_upstream_ejected in /metrics")

    @inlineCallbacks
    def passing_check(self) -> Any:
        """Wait until the proxy has taken in a health check that passed after now."""
        health = self.upstream.health
        now = reactor.seconds()
        yield eventually(
            lambda: health.checked_at is not None and health.checked_at > now and not health.down
        )

    @inlineCallbacks
    def back_within_an_interval(self, restored: float) -> Any:
        """Poll until a request gets 200; it must be the first one after a passing check, within an interval."""
        yield self.passing_check()
        self.assertEqual((yield self.code()), 200, "the first request after a passing check")
        elapsed = time.monotonic() - restored
        print(f"\nback {elapsed:.2f} s after the backend recovered (health interval {INTERVAL} s)")
        self.assertLess(elapsed, 3 * INTERVAL)
        self.assertEqual((yield self.ejected()), 0)
        yield self.agree("serving")

    @inlineCallbacks
    def test_500s_then_503s_then_recovery(self) -> Any:
        """500s eject nothing; a burst of 503s ejects; once the backend is well, 200 within a health interval."""
        backend, _, _ = self.setup_all()
        yield self.passing_check()
        for _ in range(5):
            self.assertEqual((yield self.code("/boom")), 500)
        self.assertEqual((yield self.ejected()), 0)
        yield self.agree("serving")
        self.assertEqual((yield self.code()), 200)

        yield self.passing_check()
        backend.app, backend.health = 503, "hang"  # no check can pass (or fail) until told
        for _ in range(2):
            self.assertEqual((yield self.code()), 503)  # three tries each
        self.assertEqual((yield self.ejected()), 1)
        status = yield self.agree("degraded")  # ejected, its checks not failed: still served
        self.assertEqual(status["upstreams"][0]["timeline"][-1][1], "ejected")
        self.assertTrue(status["upstreams"][0]["ejected"])

        backend.health = 503
        response, content = yield eventually(self._circuit_open, interval=0.05)
        self.assertEqual(json_of(content)["details"]["attempts"], 0)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        yield self.agree("not ready")

        backend.app = backend.health = 200
        yield self.back_within_an_interval(time.monotonic())

    @inlineCallbacks
    def _circuit_open(self) -> Any:
        response, content = yield self.get()
        if json_of(content).get("details", {}).get("errorType") == "CIRCUIT_OPEN":
            return response, content
        return None

    @inlineCallbacks
    def test_killed_and_restarted_backend(self) -> Any:
        """A backend killed and started again on its port gets requests again within a health interval."""
        backend, site, _ = self.setup_all(eject_after=3)  # one request's three refused tries eject
        yield self.passing_check()
        self.assertEqual((yield self.code()), 200)
        port = site.listening.getHost().port
        yield site.kill()
        response, content = yield self.get()
        self.assertEqual((response.code, json_of(content)["details"]["errorType"]), (503, "ECONNREFUSED"))
        self.assertEqual((yield self.ejected()), 1)
        yield self.agree("not ready")
        response, content = yield self.get()
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["details"]["attempts"], 0, "a fast 503 while it is down")

        site.start(port)
        yield self.back_within_an_interval(time.monotonic())
        self.assertEqual(backend.requests, 2)
