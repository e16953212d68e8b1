"""
Rate and concurrency limits over real loopback sockets: the 11th POST of a
minute gets 429 with Retry-After and the RateLimit fields while another
caller and GETs pass, and passes again after Retry-After (the limits on a
Clock); N slow requests in flight, the next refused, a slot freed by an
answer and by a client that leaves; the proxy's own errors to an
EventSource as a proxy-error event (the access log and metrics keeping the
real status), and as plain errors with --sse-errors plain.
"""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client import generate_latest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.http._site import ProxySite
from sora2proxy.limits._gate import Limits
from sora2proxy.limits._store import MemoryLimitStore
from sora2proxy.ops._metrics import Telemetry

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor, refused_port

RULE = "POST:/videos=10/m"


def caller(name: str, *more: tuple[bytes, bytes]) -> Headers:
    headers = Headers({b"x-api-key": [name.encode()]})
    for field, value in more:
        headers.addRawHeader(field, value)
    return headers


def metrics(telemetry: Telemetry) -> str:
    return generate_latest(telemetry.registry).decode()


class RateLoopbackTests(LoopbackMixin, TestCase):
    def serve(self, resource: ProxyResource, config: ProxyConfig) -> str:
        port = reactor.listenTCP(0, ProxySite(resource, config), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/api/proxy"

    @inlineCallbacks
    def test_eleventh_post_in_a_minute(self) -> Any:
        """The 11th POST /videos of a minute gets 429 with Retry-After and RateLimit fields; others pass; after Retry-After it passes."""
        upstream = RecordingUpstream()
        _, upstream_url = self.start_upstream(upstream)
        config = ProxyConfig(upstream=upstream_url, health_path="", rate_limit=[RULE])
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)
        clock = Clock()
        gate = Limits.of(MemoryLimitStore(clock), clock, [RULE], [])
        telemetry = Telemetry(reactor)
        telemetry.watch_limits(gate)
        url = self.serve(
            ProxyResource(attrs.evolve(proxy.resource.parts, limits=gate, telemetry=telemetry)), config
        )
        for n in range(10):
            response, _ = yield self.fetch(b"POST", url + "/videos", b"{}", caller("alice"))
            self.assertEqual(response.code, 200)
            self.assertEqual(
                response.headers.getRawHeaders(b"ratelimit"), [f'"{RULE}";r={9 - n};t={6 * (n + 1)}'.encode()]
            )
        response, body = yield self.fetch(b"POST", url + "/videos", b"{}", caller("alice"))
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"6"])
        self.assertEqual(
            response.headers.getRawHeaders(b"ratelimit-policy"), [f'"{RULE}";q=10;w=60'.encode()]
        )
        self.assertEqual(response.headers.getRawHeaders(b"ratelimit"), [f'"{RULE}";r=0;t=6'.encode()])
        error = json_of(body)
        self.assertEqual(error["details"]["errorType"], "RATE_LIMITED")
        self.assertIn(RULE, error["message"])
        self.assertIn("accepted in 6 s", error["message"])
        self.assertEqual(len(upstream.seen), 10, "the refused request was not forwarded")
        response, _ = yield self.fetch(b"POST", url + "/videos", b"{}", caller("bob"))
        self.assertEqual(response.code, 200, "another caller is not limited")
        response, _ = yield self.fetch(b"GET", url + "/videos", None, caller("alice"))
        self.assertEqual(response.code, 200, "a GET is not limited")
        self.assertIsNone(response.headers.getRawHeaders(b"ratelimit"))
        self.assertIn(f'sora2proxy_rate_limited_total{{rule="{RULE}"}} 1.0', metrics(telemetry))
        clock.advance(6)
        response, _ = yield self.fetch(b"POST", url + "/videos", b"{}", caller("alice"))
        self.assertEqual(response.code, 200, "served again after Retry-After")

    @inlineCallbacks
    def test_idempotent_replays_do_not_count(self) -> Any:
        """Replays of a keyed POST and its 409s do not count against the rate."""
        upstream = RecordingUpstream()
        _, upstream_url = self.start_upstream(upstream)
        url, _ = self.start_proxy(upstream=upstream_url, health_path="", rate_limit=["POST:/videos=2/h"])
        keyed = caller("alice", (b"idempotency-key", b"k-1"))
        for _ in range(5):
            response, _ = yield self.fetch(b"POST", url + "/api/proxy/videos", b"{}", keyed)
            self.assertEqual(response.code, 200)
        response, _ = yield self.fetch(b"POST", url + "/api/proxy/videos", b"{}", caller("alice"))
        self.assertEqual(response.code, 200, "the second of two: replays did not count")
        response, _ = yield self.fetch(b"POST", url + "/api/proxy/videos", b"{}", caller("alice"))
        self.assertEqual(response.code, 429)
        self.assertEqual(len(upstream.seen), 2)


class ConcurrencyLoopbackTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_slots_freed_by_answers_and_by_clients_leaving(self) -> Any:
        """Two slow POSTs in flight, the third gets 429; one answered frees a slot; a client that leaves frees one too."""
        upstream = RecordingUpstream("hang")
        _, upstream_url = self.start_upstream(upstream)
        url, proxy = self.start_proxy(  # held answers never time out, however busy the machine
            upstream=upstream_url, health_path="", max_concurrent=["POST:/videos=2"], timeout=120
        )
        self.addCleanup(
            lambda: [r.finish() for r in upstream.hanging if r not in upstream.lost and not r.finished]
        )
        videos = url + "/api/proxy/videos"
        first = self.fetch(b"POST", videos, b"{}", caller("alice"))
        second = self.client().request(b"POST", videos.encode(), caller("alice"))
        yield eventually(lambda: len(upstream.seen) == 2, what="two POSTs at the backend")
        response, body = yield self.fetch(b"POST", videos, b"{}", caller("alice"))
        self.assertEqual((response.code, json_of(body)["details"]["errorType"]), (429, "TOO_MANY_IN_FLIGHT"))
        self.assertIn("POST:/videos=2", json_of(body)["message"])
        self.assertEqual(len(upstream.seen), 2)
        upstream.hanging[0].write(b"done")
        upstream.hanging[0].finish()
        response, _ = yield first
        self.assertEqual(response.code, 200)
        third = self.fetch(b"POST", videos, b"{}", caller("alice"))
        yield eventually(lambda: len(upstream.seen) == 3, what="a third POST let through")
        second.cancel()  # the client leaves: its slot is freed
        self.failureResultOf(second)
        gate = proxy.resource.parts.limits
        yield eventually(lambda: gate.in_flight["POST:/videos=2"] == 1, what="the slot freed")
        fourth = self.fetch(b"POST", videos, b"{}", caller("alice"))
        yield eventually(lambda: len(upstream.seen) == 4, what="a fourth POST let through")
        for request in upstream.hanging[2:]:
            request.finish()
        responses = yield third, fourth
        for response in responses:
            self.assertEqual((yield response)[0].code, 200)


class EventStreamTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_proxy_error_event(self) -> Any:
        """An EventSource gets the proxy's 503 as 200 text/event-stream: retry, one proxy-error event, the end; metrics keep 503."""
        url, proxy = self.start_proxy(
            upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="", health_interval=2, attempts=1
        )
        response, body = yield self.fetch(
            b"GET", url + "/api/proxy/events", None, caller("a", (b"accept", b"text/event-stream"))
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"]
        )
        lines = body.decode().split("\n")
        self.assertEqual(lines[:2], ["retry: 2000", "event: proxy-error"])
        self.assertTrue(lines[2].startswith("data: "))
        self.assertEqual(json_of(lines[2][6:].encode())["details"]["errorType"], "ECONNREFUSED")
        self.assertEqual(lines[3:], ["", ""], "one event, then the end")
        text = metrics(proxy.telemetry)
        self.assertIn('sora2proxy_requests_total{method="GET",status="503"} 1.0', text)
        self.assertIn('sora2proxy_errors_total{error_type="ECONNREFUSED"} 1.0', text)

    @inlineCallbacks
    def test_plain(self) -> Any:
        """With --sse-errors plain an EventSource gets the 503 JSON error as it is."""
        url, _ = self.start_proxy(
            upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="", attempts=1, sse_errors="plain"
        )
        response, body = yield self.fetch(
            b"GET", url + "/api/proxy/events", None, caller("a", (b"accept", b"text/event-stream"))
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(body)["details"]["errorType"], "ECONNREFUSED")

    @inlineCallbacks
    def test_upstream_errors_pass_through(self) -> Any:
        """A backend's own 503 reaches the EventSource as it is: only the proxy's own errors become events."""
        _, upstream_url = self.start_upstream(RecordingUpstream("status:503"))
        url, _ = self.start_proxy(upstream=upstream_url, health_path="", attempts=1)
        response, body = yield self.fetch(
            b"GET", url + "/api/proxy/events", None, caller("a", (b"accept", b"text/event-stream"))
        )
        self.assertEqual((response.code, body), (503, b'{"from":"upstream"}'))

    @inlineCallbacks
    def test_rate_limited_event(self) -> Any:
        """A 429 of a rate rule reaches an EventSource as a proxy-error event whose retry is Retry-After in ms."""
        _, upstream_url = self.start_upstream(RecordingUpstream())
        url, _ = self.start_proxy(upstream=upstream_url, health_path="", rate_limit=["GET:/events=1/m"])
        stream = caller("a", (b"accept", b"text/event-stream"))
        response, _ = yield self.fetch(b"GET", url + "/api/proxy/events", None, stream)
        self.assertEqual(response.code, 200)
        response, body = yield self.fetch(b"GET", url + "/api/proxy/events", None, stream)
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith(b"retry: 60000\nevent: proxy-error\ndata: {"), body)
        self.assertIn(b'"RATE_LIMITED"', body)
