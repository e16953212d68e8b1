"""
The safe-retry rules over real loopback sockets.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from sora2proxy import ProxyConfig
from sora2proxy.resilience._budget import RetryBudget

from .helpers import LoopbackMixin, RecordingUpstream, json_of, refused_port


class FlakyUpstream(Resource):
    """Answers 503 with Retry-After to its first N requests, then 200; records arrival times."""

    isLeaf = True

    def __init__(self, failures: int, retry_after: bytes | None = b"1") -> None:
        super().__init__()
        self.failures = failures
        self.retry_after = retry_after
        self.times: list[float] = []
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.times.append(time.monotonic())
        assert request.content is not None
        self.bodies.append(request.content.read())
        if len(self.times) <= self.failures:
            request.setResponseCode(503)
            if self.retry_after is not None:
                request.setHeader(b"retry-after", self.retry_after)
            return b"busy"
        return b'{"ok":true}'


class SafeRetryOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_post_with_key_retried_after_hang(self) -> Any:
        """A POST with an Idempotency-Key that hung is sent again (the key makes it safe)."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", timeout=0.2, backoff=0.05)
        response, content = yield self.fetch(
            b"POST", proxy + "/api/proxy/videos", b"{}", Headers({b"idempotency-key": [b"job-1"]})
        )
        self.assertEqual(response.code, 504)
        self.assertEqual(json_of(content)["details"]["attempts"], 3)
        self.assertEqual(len(upstream.seen), 3)
        self.assertEqual({s.headers.getRawHeaders(b"idempotency-key")[0] for s in upstream.seen}, {b"job-1"})
        self.assertEqual({s.body for s in upstream.seen}, {b"{}"})

    @inlineCallbacks
    def test_post_to_refused_port_retried(self) -> Any:
        """A POST to a port nobody listens on never reached anything, so it is tried 3 times."""
        url = f"http://127.0.0.1:{refused_port()}/api"
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.05)
        response, content = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b"{}")
        self.assertEqual(response.code, 503)
        body = json_of(content)
        self.assertEqual(body["details"]["attempts"], 3)
        self.assertTrue(body["details"]["retryable"])

    @inlineCallbacks
    def test_get_503_honours_retry_after(self) -> Any:
        """A GET answered 503 with Retry-After: 1 is retried about a second later and succeeds."""
        upstream = FlakyUpstream(1)
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.01)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/videos")
        self.assertEqual(response.code, 200)
        self.assertEqual(content, b'{"ok":true}')
        self.assertEqual(len(upstream.times), 2)
        self.assertGreaterEqual(upstream.times[1] - upstream.times[0], 0.95)

    @inlineCallbacks
    def test_deadline_bounds_total_time(self) -> Any:
        """--deadline 1.5 ends a request to a hanging backend with 504 at 1.5 s."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", timeout=1, backoff=0.2, deadline=1.5)
        started = time.monotonic()
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/slow")
        elapsed = time.monotonic() - started
        self.assertEqual(response.code, 504)
        self.assertEqual(json_of(content)["details"]["errorType"], "TIMEOUT")
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 2.5)
        self.assertEqual(len(upstream.seen), 2)

    @inlineCallbacks
    def test_two_upstreams_one_refused(self) -> Any:
        """With one upstream refused and one alive, 200 GETs all succeed."""
        alive = RecordingUpstream()
        _, alive_url = self.start_upstream(alive)
        dead_url = f"http://127.0.0.1:{refused_port()}/api"
        proxy, _ = self.start_proxy(upstream=(dead_url, alive_url), health_path="", backoff=0.01)
        for batch in range(10):
            results = yield gatherResults(
                [self.fetch(b"GET", proxy + f"/api/proxy/n/{batch}/{i}") for i in range(20)]
            )
            self.assertEqual([r.code for r, _ in results], [200] * 20)
        self.assertEqual(len(alive.seen), 200)

    @inlineCallbacks
    def test_outage_amplification(self) -> Any:
        """Under a total outage, 1,000 GETs reach the upstream at most 1.2 times each on average."""
        upstream = FlakyUpstream(10**9, retry_after=None)
        _, url = self.start_upstream(upstream)
        # The default budget (20% of requests, 5 a second of its 10 s window),
        # on a clock that stands still: the 1,000 requests fall in one window
        # however long they take on a loaded machine (a window that slid
        # would allow more retries).  The 10 s window is BudgetTests' on a Clock.
        budget = RetryBudget(Clock(), ProxyConfig().retry_budget)
        proxy, _ = self.start_proxy(budget, upstream=url, health_path="", backoff=0, eject_after=0)
        for batch in range(20):
            results = yield gatherResults(
                [self.fetch(b"GET", proxy + f"/api/proxy/{batch}/{i}") for i in range(50)]
            )
            self.assertEqual({r.code for r, _ in results}, {503})
        tries = len(upstream.times)
        print(f"\noutage: 1000 requests, {tries} upstream tries ({tries / 1000:.3f} per request)")
        self.assertLessEqual(tries, 1200)
        self.assertGreaterEqual(tries, 1000)

    @inlineCallbacks
    def test_large_body_replayed_whole(self) -> Any:
        """A 2 MiB PUT retried after a 503 sends the whole body again, from its start."""
        upstream = FlakyUpstream(1, retry_after=None)
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.01)
        payload = bytes(range(256)) * 8192
        response, _ = yield self.fetch(b"PUT", proxy + "/api/proxy/upload", payload)
        self.assertEqual(response.code, 200)
        self.assertEqual(upstream.bodies, [payload, payload])
