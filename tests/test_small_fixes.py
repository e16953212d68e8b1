"""
What an outside tester saw, over loopback against real upstreams: the
C{sora2proxy_upstream_healthy} gauge tells what C{/status.json} tells at
scrape time (a refused try marks the upstream down at once); the admin
port's 421 carries its registered phrase; an invalid C{Idempotency-Key}
suggests what to change in the request, not a retry; and a relayed 204
carries no C{Content-Length} (RFC 9110 section 8.6), a 304 keeps its own.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.http._site import ProxySite, QuietSite
from sora2proxy.ops._admin import Admin

from .helpers import LoopbackMixin, eventually, json_of, reactor, refused_port
from .test_answers import _Canned, exchange
from .test_ejection_loopback import Backend, Killable


def healthy_gauge(text: bytes) -> dict[str, float]:
    """The C{sora2proxy_upstream_healthy} samples of a C{/metrics} answer, by upstream."""
    return {
        sample.labels["upstream"]: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == "sora2proxy_upstream_healthy"
    }


def head_and_body(answer: bytes) -> tuple[list[bytes], bytes]:
    """The status line and header lines of a raw HTTP answer, and its body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


class ServedProxy(LoopbackMixin, TestCase):
    def serve(self, **options: Any) -> tuple[int, int, Any]:
        """A proxy and its admin port on loopback: their port numbers and the proxy."""
        config = ProxyConfig(**options)
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)
        public = reactor.listenTCP(0, ProxySite(proxy.resource, config), interface="127.0.0.1")
        self.addCleanup(public.stopListening)
        site = QuietSite(Admin(proxy.telemetry, proxy.balancer).resource())
        admin = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(admin.stopListening)
        return public.getHost().port, admin.getHost().port, proxy


class HealthGaugeTests(ServedProxy):
    @inlineCallbacks
    def test_refused_try_seen_at_once(self) -> Any:
        """A killed backend's refused try shows as healthy 0 in /metrics at once, as /status.json says down."""
        site = Killable(Backend())
        url = f"http://127.0.0.1:{site.start()}/api"
        self.addCleanup(lambda: site.listening.stopListening() if site.listening.connected else None)
        public, admin, proxy = self.serve(upstream=url, health_interval=3600, backoff=0.01)
        upstream = proxy.balancer.upstreams[0]
        yield eventually(lambda: upstream.health.status.value == "up", what="the first health check")
        _, metrics = yield self.fetch(b"GET", f"http://127.0.0.1:{admin}/metrics")
        self.assertEqual(healthy_gauge(metrics), {url: 1.0})
        yield site.kill()
        response, _ = yield self.fetch(b"GET", f"http://127.0.0.1:{public}/api/proxy/a")
        self.assertEqual(response.code, 503)
        _, status = yield self.fetch(b"GET", f"http://127.0.0.1:{admin}/status.json")
        self.assertEqual(json_of(status)["upstreams"][0]["health"], "down")
        _, metrics = yield self.fetch(b"GET", f"http://127.0.0.1:{admin}/metrics")
        self.assertEqual(healthy_gauge(metrics), {url: 0.0})

    @inlineCallbacks
    def test_no_health_checks_unknown(self) -> Any:
        """Without health checks the gauge says -1 (unknown), as /status.json does."""
        url = f"http://127.0.0.1:{refused_port()}/api"
        _, admin, _ = self.serve(upstream=url, health_path="")
        _, status = yield self.fetch(b"GET", f"http://127.0.0.1:{admin}/status.json")
        self.assertEqual(json_of(status)["upstreams"][0]["health"], "unknown")
        _, metrics = yield self.fetch(b"GET", f"http://127.0.0.1:{admin}/metrics")
        self.assertEqual(healthy_gauge(metrics), {url: -1.0})


class PhraseTests(ServedProxy):
    @inlineCallbacks
    def test_admin_statuses_have_phrases(self) -> Any:
        """The admin port's 421 for a foreign Host, and its 200 and 503, go out with their registered phrases."""
        _, admin, _ = self.serve(upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="")
        for host, path, line in (
            (b"evil.example", b"/ready", b"HTTP/1.1 421 Misdirected Request"),
            (b"localhost", b"/health", b"HTTP/1.1 200 OK"),
        ):
            answer = yield exchange(
                admin, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)
            )
            self.assertEqual(head_and_body(answer)[0][0], line)


class InvalidKeyTests(ServedProxy):
    @inlineCallbacks
    def test_invalid_key_says_what_to_change(self) -> Any:
        """Two Idempotency-Key headers, or a non-ASCII one, get 400 saying how to send the key, not to retry."""
        public, _, _ = self.serve(upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="")
        for keys in (b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n", b"Idempotency-Key: \xc3\xa9\r\n"):
            answer = yield exchange(
                public,
                b"POST /api/proxy/jobs HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nConnection: close\r\n"
                + keys
                + b"\r\n{}",
            )
            lines, body = head_and_body(answer)
            self.assertEqual(lines[0], b"HTTP/1.1 400 Bad Request")
            details = json.loads(body)["details"]
            self.assertEqual(details["errorType"], "IDEMPOTENCY_KEY_INVALID")
            self.assertIn("one Idempotency-Key header", details["suggestion"])
            self.assertIn("printable ASCII", details["suggestion"])
            self.assertNotIn("retry", details["suggestion"].lower())


GET = b"GET /api/proxy/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
KEYED_POST = (
    b"POST /api/proxy/x HTTP/1.1\r\nHost: p\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


def content_lengths(lines: list[bytes]) -> list[bytes]:
    """The Content-Length lines among lower-cased head lines."""
    return [line for line in lines if line.startswith(b"content-length")]


class NoBodyLengthTests(ServedProxy):
    @inlineCallbacks
    def relayed(self, status_line: bytes, request: bytes = GET, times: int = 1) -> Any:
        """
        The head lines a client gets for C{request} sent C{times} times, the
        upstream answering C{status_line} with C{Content-Length: 5}.
        """
        factory = Factory.forProtocol(_Canned)
        factory.answer = status_line + b'\r\nContent-Length: 5\r\nETag: "v1"\r\nConnection: close\r\n\r\n'  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/api"
        public, _, _ = self.serve(upstream=url, health_path="", attempts=1)
        for _ in range(times):
            answer = yield exchange(public, request)
            lines, body = head_and_body(answer)
            self.assertEqual(body, b"")
        return [line.lower() for line in lines]

    @inlineCallbacks
    def test_204_loses_content_length(self) -> Any:
        """An upstream 204 with Content-Length: 5 reaches the client without any Content-Length."""
        lines = yield self.relayed(b"HTTP/1.1 204 No Content")
        self.assertEqual(lines[0], b"http/1.1 204 no content")
        self.assertEqual(content_lengths(lines), [])
        self.assertIn(b'etag: "v1"', lines)

    @inlineCallbacks
    def test_replayed_204_without_content_length(self) -> Any:
        """A keyed POST's 204, replayed for the same key, carries no Content-Length either."""
        lines = yield self.relayed(b"HTTP/1.1 204 No Content", KEYED_POST, times=2)
        self.assertIn(b"idempotent-replayed: true", lines)
        self.assertEqual(lines[0], b"http/1.1 204 no content")
        self.assertEqual(content_lengths(lines), [])

    @inlineCallbacks
    def test_304_keeps_content_length(self) -> Any:
        """An upstream 304's Content-Length (the length of the resource) is relayed as sent."""
        lines = yield self.relayed(b"HTTP/1.1 304 Not Modified")
        self.assertEqual(lines[0], b"http/1.1 304 not modified")
        self.assertEqual(content_lengths(lines), [b"content-length: 5"])
