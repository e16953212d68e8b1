"""
The proxy resource in memory, on a Clock: forwarding, the error table, the
retry schedule and the health gate, with no sockets.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from sora2proxy import ProxyConfig
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.resilience._health import HealthState

from .helpers import MemoryHarness, RecordingUpstream, parts_for


def body_json(harness: MemoryHarness, response: Any) -> Any:
    d = treq.content(response)
    harness.flush()
    return json.loads(_result(d))


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@implementer(IAgent)
class ScriptedAgent:
    """An agent whose tries fail as scripted, counting them."""

    def __init__(self, clock: Any, failures: list[Exception | None]) -> None:
        self.clock = clock
        self.failures = failures
        self.tries: list[float] = []
        self.pending: list[Deferred[Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        self.tries.append(self.clock.seconds())
        outcome = self.failures.pop(0) if self.failures else None
        if outcome is None:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        return fail(outcome)


def scripted(failures: list[Exception | None], **options: Any) -> tuple[MemoryHarness, ScriptedAgent]:
    harness = MemoryHarness(RecordingUpstream(), **options)
    agent = ScriptedAgent(harness.clock, failures)
    harness.parts = parts_for(harness.config, harness.clock, agent, harness.health)
    harness.resource = ProxyResource(harness.parts)
    harness.client = StubTreq(harness.resource)
    return harness, agent


class ForwardingTests(SynchronousTestCase):
    def test_forwards_path_query_and_body(self) -> None:
        """A POST under the prefix reaches the upstream's base path with its raw query and body."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream)
        d = harness.client.post(
            "http://proxy.test/api/proxy/videos?x=%2F&x=2",
            data=b'{"prompt":"cat"}',
            headers={"X-Request-ID": ["abc-123"]},
        )
        harness.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), ["abc-123"])
        self.assertEqual(len(upstream.seen), 1)
        seen = upstream.seen[0]
        self.assertEqual(seen.uri, b"/api/videos?x=%2F&x=2")
        self.assertEqual(seen.body, b'{"prompt":"cat"}')
        self.assertEqual(seen.headers.getRawHeaders(b"x-request-id"), [b"abc-123"])

    def test_upstream_errors_pass_through(self) -> None:
        """An upstream 404 reaches the client as the upstream sent it."""
        upstream = RecordingUpstream("status:404")
        harness = MemoryHarness(upstream)
        d = harness.client.get("http://proxy.test/api/proxy/missing")
        harness.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertEqual(body_json(harness, response), {"from": "upstream"})

    def test_set_cookie_kept(self) -> None:
        """Every Set-Cookie of the upstream reaches the client."""
        harness = MemoryHarness(RecordingUpstream())
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders("set-cookie"), ["a=1; Path=/", "b=2; Path=/"])

    def test_new_request_id(self) -> None:
        """Without an X-Request-ID, the proxy makes one and sends it both ways."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        response = self.successResultOf(d)
        [rid] = response.headers.getRawHeaders("x-request-id")
        self.assertEqual(len(rid), 32)
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"x-request-id"), [rid.encode()])

    def test_bad_request_id_replaced(self) -> None:
        """A client X-Request-ID with spaces or control bytes is replaced by a new one."""
        harness = MemoryHarness(RecordingUpstream())
        d = harness.client.get("http://proxy.test/api/proxy/a", headers={"X-Request-ID": ["a b"]})
        harness.flush()
        [rid] = self.successResultOf(d).headers.getRawHeaders("x-request-id")
        self.assertNotEqual(rid, "a b")

    def test_outside_prefix_404(self) -> None:
        """A path outside the prefix gets a JSON 404 NOT_FOUND and never reaches the upstream."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream)
        for path in ("/api/proxyx", "/other", "/api"):
            d = harness.client.get("http://proxy.test" + path)
            harness.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 404)
            body = body_json(harness, response)
            self.assertEqual(body["details"]["errorType"], "NOT_FOUND")
            self.assertEqual(body["details"]["attempts"], 0)
        self.assertEqual(upstream.seen, [])

    def test_prefix_itself(self) -> None:
        """The prefix alone maps to the upstream's base path."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream)
        d = harness.client.get("http://proxy.test/api/proxy?q=1")
        harness.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(upstream.seen[0].uri, b"/api?q=1")

    def test_root_prefix(self) -> None:
        """With --prefix / every path is forwarded under the upstream's base path."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream, prefix="/")
        d = harness.client.get("http://proxy.test/users/7?x=1")
        harness.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(upstream.seen[0].uri, b"/api/users/7?x=1")

    def test_hop_by_hop_not_forwarded(self) -> None:
        """Hop-by-hop request headers, and those Connection names, do not reach the upstream."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream)
        d = harness.client.get(
            "http://proxy.test/api/proxy/a",
            headers={"Connection": ["x-secret"], "X-Secret": ["1"], "Keep-Alive": ["5"], "X-Keep": ["y"]},
        )
        harness.flush()
        self.successResultOf(d)
        headers = upstream.seen[0].headers
        self.assertFalse(headers.hasHeader(b"x-secret"))
        self.assertFalse(headers.hasHeader(b"keep-alive"))
        self.assertEqual(headers.getRawHeaders(b"x-keep"), [b"y"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"http"])


class ErrorTableTests(SynchronousTestCase):
    def error_of(self, harness: MemoryHarness, d: Deferred[Any]) -> tuple[Any, Any]:
        harness.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response, body_json(harness, response)

    def test_every_try_refused(self) -> None:
        """Three refused tries give 503 ECONNREFUSED with Retry-After and the suggestion."""
        harness, agent = scripted([ConnectionRefusedError()] * 3, suggestion="Run: make backend")
        d = harness.client.get("http://proxy.test/api/proxy/users")
        harness.flush()
        harness.advance(1)
        harness.advance(2)
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        self.assertEqual(body["error"], "Backend unavailable")
        self.assertIn("http://backend.test:3101/api", body["message"])
        details = body["details"]
        self.assertEqual(details["errorType"], "ECONNREFUSED")
        self.assertEqual(details["attempts"], 3)
        self.assertEqual(details["durationMs"], 3000)
        self.assertEqual(details["suggestion"], "Run: make backend")
        self.assertEqual(details["upstream"], "http://backend.test:3101/api")
        self.assertEqual(details["requestId"], response.headers.getRawHeaders("x-request-id")[0])
        self.assertEqual(agent.tries, [0, 1, 3])

    def test_last_try_timed_out(self) -> None:
        """A GET whose tries all hang gets 504 TIMEOUT after 30 s per try, 1 s and 2 s between."""
        harness, agent = scripted([None, None, None])
        d = harness.client.get("http://proxy.test/api/proxy/slow")
        harness.flush()
        harness.advance(29.9)
        self.assertEqual(len(agent.tries), 1)
        harness.advance(0.1)  # try 1 times out at 30
        harness.advance(1)  # try 2 starts at 31
        harness.advance(30)  # times out at 61
        harness.advance(2)  # try 3 starts at 63
        harness.advance(30)  # times out at 93
        response, body = self.error_of(harness, d)
        self.assertEqual(agent.tries, [0, 31, 63])
        self.assertEqual(response.code, 504)
        self.assertEqual(body["details"]["errorType"], "TIMEOUT")
        self.assertEqual(body["details"]["attempts"], 3)
        self.assertFalse(response.headers.hasHeader("retry-after"))
        self.assertTrue(all(p.called for p in agent.pending), "timed-out tries were cancelled")

    def test_reset_is_upstream_error(self) -> None:
        """A reset connection gives 502 UPSTREAM_ERROR."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web._newclient import ResponseNeverReceived

        harness, _agent = scripted([ResponseNeverReceived([Failure(ConnectionLost())])] * 3)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        harness.advance(1)
        harness.advance(2)
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 502)
        self.assertEqual(body["details"]["errorType"], "UPSTREAM_ERROR")
        self.assertEqual(body["details"]["attempts"], 3)

    def test_dns_failure_is_upstream_error(self) -> None:
        """A DNS failure gives 502 UPSTREAM_ERROR."""
        from twisted.internet.error import DNSLookupError

        harness, _agent = scripted([DNSLookupError("nope")] * 3)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        harness.advance(1)
        harness.advance(2)
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 502)
        self.assertEqual(body["details"]["errorType"], "UPSTREAM_ERROR")

    def test_health_down_fails_fast(self) -> None:
        """While the monitor says down, a request gets 503 HEALTH_CHECK_FAILED with no try."""
        harness, agent = scripted([], health=True)
        assert harness.health is not None
        harness.health.mark_down("connection refused")
        d = harness.client.get("http://proxy.test/api/proxy/a")
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        self.assertEqual(body["details"]["errorType"], "HEALTH_CHECK_FAILED")
        self.assertEqual(body["details"]["attempts"], 0)
        self.assertIn("connection refused", body["message"])
        self.assertEqual(agent.tries, [])

    def test_bug_is_500_without_traceback(self) -> None:
        """A bug in the proxy gives 500 INTERNAL, without a traceback unless --dev."""
        harness, _agent = scripted([ZeroDivisionError("boom")])
        d = harness.client.get("http://proxy.test/api/proxy/a")
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 500)
        self.assertEqual(body["details"]["errorType"], "INTERNAL")
        self.assertNotIn("traceback", body["details"])
        self.assertNotIn("ZeroDivisionError", json.dumps(body))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_bug_traceback_with_dev(self) -> None:
        """With --dev, the 500 body carries the traceback."""
        harness, _agent = scripted([ZeroDivisionError("boom")], dev=True)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        response, body = self.error_of(harness, d)
        self.assertEqual(response.code, 500)
        self.assertIn("ZeroDivisionError", body["details"]["traceback"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_html_for_browsers(self) -> None:
        """A browser asking for HTML gets a readable page with the same facts."""
        harness, _agent = scripted([ConnectionRefusedError()], attempts=1)
        d = harness.client.get("http://proxy.test/api/proxy/a", headers={"Accept": ["text/html"]})
        harness.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        page = treq.content(response)
        harness.flush()
        text = self.successResultOf(page).decode()
        self.assertIn("Run: npm run dev:api", text)
        self.assertIn("ECONNREFUSED", text)


class RetryScheduleTests(SynchronousTestCase):
    def test_refused_then_up(self) -> None:
        """A refused try is followed 1 s later by a second, which gets the upstream's answer."""
        harness, agent = scripted([ConnectionRefusedError()])
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        self.assertEqual(agent.tries, [0])
        harness.advance(0.999)
        self.assertEqual(agent.tries, [0])
        harness.advance(0.001)
        self.assertEqual(agent.tries, [0, 1])
        self.assertNoResult(d)

    def test_post_timeout_not_retried(self) -> None:
        """A POST that timed out after being sent is not sent again (it may be running)."""
        harness, agent = scripted([None, None, None])
        d = harness.client.post("http://proxy.test/api/proxy/videos", data=b"{}")
        harness.flush()
        harness.advance(30)
        harness.advance(100)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(len(agent.tries), 1)
        body = body_json(harness, response)
        self.assertEqual(body["details"]["attempts"], 1)
        self.assertFalse(body["details"]["retryable"])

    def test_post_refused_retried(self) -> None:
        """A POST that was refused never reached the upstream, so it is retried."""
        harness, agent = scripted([ConnectionRefusedError()] * 3)
        d = harness.client.post("http://proxy.test/api/proxy/videos", data=b"{}")
        harness.flush()
        harness.advance(1)
        harness.advance(2)
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(agent.tries, [0, 1, 3])

    def test_attempts_one(self) -> None:
        """--attempts 1 sends exactly one try."""
        harness, agent = scripted([ConnectionRefusedError()] * 3, attempts=1)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        harness.advance(10)
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(agent.tries), 1)

    def test_client_gone_cancels_wait(self) -> None:
        """A client that disconnects during the backoff wait gets no further try."""
        harness, agent = scripted([ConnectionRefusedError()] * 3)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        d.cancel()
        harness.flush()
        harness.advance(10)
        self.assertEqual(agent.tries, [0])
        self.failureResultOf(d)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class HealthGateTests(SynchronousTestCase):
    def test_refused_try_marks_down(self) -> None:
        """With health checks on, a refused try marks the upstream down for the next request."""
        harness, agent = scripted([ConnectionRefusedError()] * 3, health=True)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        assert harness.health is not None
        self.assertTrue(harness.health.down)
        harness.advance(1)
        harness.advance(2)
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(agent.tries), 3, "a request under way keeps its tries")
        d2 = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        body = body_json(harness, self.successResultOf(d2))
        self.assertEqual(body["details"]["errorType"], "HEALTH_CHECK_FAILED")
        self.assertEqual(len(agent.tries), 3)

    def test_success_marks_up(self) -> None:
        """A response from the upstream marks it healthy again."""
        upstream = RecordingUpstream()
        harness = MemoryHarness(upstream, health=True)
        assert harness.health is not None
        harness.health.mark_down("x")
        harness.health.mark_up()  # the next check succeeded
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertFalse(harness.health.down)

    def test_no_gate_without_health(self) -> None:
        """With health checks off, refused tries never stop later requests from being tried."""
        harness, agent = scripted([ConnectionRefusedError()] * 6, attempts=3)
        for _ in range(2):
            d = harness.client.get("http://proxy.test/api/proxy/a")
            harness.flush()
            harness.advance(1)
            harness.advance(2)
            self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(agent.tries), 6)


class HangingUpstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def render(self, request: Request) -> int:
        request.notifyFinish().addErrback(lambda _: setattr(self, "lost", self.lost + 1))
        return NOT_DONE_YET


class StubUpstreamTests(SynchronousTestCase):
    def test_timeout_cancels_upstream_request(self) -> None:
        """A try that times out is cancelled: the upstream sees its connection closed."""
        upstream = HangingUpstream()
        harness = MemoryHarness(upstream, attempts=1, timeout=5)
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        harness.advance(5)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(upstream.lost, 1)


__all__ = ["Headers", "HealthState", "ProxyConfig", "Site"]
