"""
The proxy over real loopback sockets, against real upstreams started by the
tests: forwarding, refusing, hanging, resetting, 500s, health going down and
up, client disconnects and connection reuse.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from sora2proxy.resilience._health import Health

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor, refused_port


class ForwardingOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_every_method(self) -> Any:
        """Every method reaches the upstream with its raw path, query and body, and comes back."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
            body = None if method in (b"GET", b"HEAD") else b"payload " + method
            response, content = yield self.fetch(
                method, proxy + "/api/proxy/v1/a%2Fb/c+d?q=%2F+x&q=2&e=%E2%9C%93", body
            )
            self.assertEqual(response.code, 200, method)
            seen = upstream.seen[-1]
            self.assertEqual(seen.method, method)
            self.assertEqual(seen.uri, b"/api/v1/a%2Fb/c+d?q=%2F+x&q=2&e=%E2%9C%93")
            self.assertEqual(seen.body, body or b"")
            if method == b"HEAD":
                self.assertEqual(content, b"")
            else:
                self.assertEqual(json_of(content)["body"], (body or b"").decode())
        self.assertEqual(len(upstream.seen), 7)

    @inlineCallbacks
    def test_upstream_500_passes_through(self) -> Any:
        """An upstream 500 is the backend's answer: the client gets it unchanged, after one try."""
        upstream = RecordingUpstream("status:500")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        response, content = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b"{}")
        self.assertEqual(response.code, 500)
        self.assertEqual(json_of(content), {"from": "upstream"})
        self.assertEqual(len(upstream.seen), 1)

    @inlineCallbacks
    def test_large_body_both_ways(self) -> Any:
        """A 3 MiB request body arrives whole, and the echo comes back whole."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        payload = bytes(range(256)) * (3 * 4096)
        response, content = yield self.fetch(b"PUT", proxy + "/api/proxy/upload", payload)
        self.assertEqual(response.code, 200)
        self.assertEqual(upstream.seen[0].body, payload)
        self.assertEqual(json_of(content)["body"].encode("latin-1"), payload)

    @inlineCallbacks
    def test_connection_reuse(self) -> Any:
        """Fifty sequential requests travel on one pooled upstream connection."""
        upstream = RecordingUpstream()
        site, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        for i in range(50):
            response, _ = yield self.fetch(b"GET", proxy + f"/api/proxy/n/{i}")
            self.assertEqual(response.code, 200)
        self.assertEqual(len(upstream.seen), 50)
        self.assertEqual(site.connections, 1)


class FailuresOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_refused(self) -> Any:
        """A backend that is not running gives 503 ECONNREFUSED with the suggestion, after 3 tries."""
        url = f"http://127.0.0.1:{refused_port()}/api"
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.05)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/users")
        self.assertEqual(response.code, 503)
        self.assertTrue(response.headers.hasHeader(b"retry-after"))
        body = json_of(content)
        self.assertEqual(body["details"]["errorType"], "ECONNREFUSED")
        self.assertEqual(body["details"]["attempts"], 3)
        self.assertEqual(body["details"]["suggestion"], "Run: npm run dev:api")
        self.assertIn(url, body["message"])
        self.assertGreaterEqual(body["details"]["durationMs"], 150)

    @inlineCallbacks
    def test_hanging(self) -> Any:
        """A backend that never answers gives 504 TIMEOUT, and its connection is closed."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", timeout=0.3, attempts=2, backoff=0.05)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/slow")
        self.assertEqual(response.code, 504)
        self.assertEqual(json_of(content)["details"]["errorType"], "TIMEOUT")
        self.assertEqual(json_of(content)["details"]["attempts"], 2)
        yield eventually(lambda: len(upstream.lost) >= 2)
        self.assertEqual(len(upstream.seen), 2)
        self.assertEqual(len(upstream.lost), 2)

    @inlineCallbacks
    def test_hanging_post_sent_once(self) -> Any:
        """A POST the backend read and then hung on is not sent twice."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", timeout=0.3, backoff=0.05)
        response, content = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b'{"p":1}')
        self.assertEqual(response.code, 504)
        self.assertEqual(json_of(content)["details"]["attempts"], 1)
        self.assertEqual(len(upstream.seen), 1)

    @inlineCallbacks
    def test_resetting(self) -> Any:
        """A backend that resets the connection gives 502 UPSTREAM_ERROR; a GET is tried 3 times."""
        upstream = RecordingUpstream("reset")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.05)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/a")
        self.assertEqual(response.code, 502)
        body = json_of(content)
        self.assertEqual(body["details"]["errorType"], "UPSTREAM_ERROR")
        self.assertEqual(body["details"]["attempts"], 3)
        self.assertEqual(len(upstream.seen), 3)

    @inlineCallbacks
    def test_resetting_post_sent_once(self) -> Any:
        """A POST whose connection was reset after sending reaches the backend exactly once."""
        upstream = RecordingUpstream("reset")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.05)
        response, content = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b"{}")
        self.assertEqual(response.code, 502)
        self.assertEqual(json_of(content)["details"]["retryable"], False)
        self.assertEqual(len(upstream.seen), 1)


class HealthOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_down_then_up(self) -> Any:
        """A failing health endpoint makes requests fail fast; once it passes they go through."""
        upstream = RecordingUpstream(health="down")
        _, url = self.start_upstream(upstream)
        proxy, built = self.start_proxy(upstream=url, health_interval=0.1)
        health = built.balancer.upstreams[0].health
        yield eventually(lambda: health.status is Health.DOWN)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/a")
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["details"]["errorType"], "HEALTH_CHECK_FAILED")
        self.assertEqual(upstream.seen, [])
        upstream.health = "ok"
        yield eventually(lambda: health.status is Health.UP)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/a")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(upstream.seen), 1)

    @inlineCallbacks
    def test_backend_started_later(self) -> Any:
        """With no backend the proxy answers 503; a backend started later is used within one interval."""
        port = refused_port()
        url = f"http://127.0.0.1:{port}/api"
        proxy, built = self.start_proxy(upstream=url, health_interval=0.2)
        health = built.balancer.upstreams[0].health
        yield eventually(lambda: health.status is Health.DOWN)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/users")
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["details"]["suggestion"], "Run: npm run dev:api")
        from twisted.web.server import Site

        upstream = RecordingUpstream()
        listening = reactor.listenTCP(port, Site(upstream), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        yield eventually(lambda: health.status is Health.UP)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/users")
        self.assertEqual(response.code, 200, content)


class _SendThenClose(Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class DisconnectOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_client_disconnect_cancels_upstream(self) -> Any:
        """A client that goes away cancels the upstream request in flight."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        port = int(proxy.rsplit(":", 1)[1])
        client = _SendThenClose(b"GET /api/proxy/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield eventually(lambda: upstream.seen)
        self.assertEqual(len(upstream.seen), 1)
        protocol.transport.loseConnection()
        yield client.closed
        yield eventually(lambda: upstream.lost)
        self.assertEqual(len(upstream.lost), 1)

    @inlineCallbacks
    def test_headers(self) -> Any:
        """X-Request-ID is sent upstream and back; X-Forwarded-For names the client."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        response, _ = yield self.fetch(
            b"GET", proxy + "/api/proxy/a", headers=Headers({b"x-request-id": [b"req-42"]})
        )
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"req-42"])
        seen = upstream.seen[0].headers
        self.assertEqual(seen.getRawHeaders(b"x-request-id"), [b"req-42"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-for"), [b"127.0.0.1"])
        host = seen.getRawHeaders(b"host")[0]
        self.assertEqual(host, url.split("/")[2].encode())


class IPv6OverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_ipv6_upstream(self) -> Any:
        """An upstream on [::1] is reached through the proxy."""
        from .helpers import CountingSite

        upstream = RecordingUpstream()
        try:
            port = reactor.listenTCP(0, CountingSite(upstream), interface="::1")
        except Exception as e:  # pragma: no cover - a machine without IPv6
            from twisted.trial.unittest import SkipTest

            raise SkipTest(f"no IPv6 loopback: {e}") from None
        self.addCleanup(port.stopListening)
        url = f"http://[::1]:{port.getHost().port}/api"
        proxy, _ = self.start_proxy(upstream=url, health_interval=0.5)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/six?x=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(json_of(content)["uri"], "/api/six?x=1")
