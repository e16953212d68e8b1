"""
The safe-retry rules on a Clock: upstream 5xx and Retry-After, deadlines,
jitter, the retry budget and several upstreams (ejection: test_ejection).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.resilience._budget import RetryBudget
from sora2proxy.resilience._retry import RetryPolicy, parse_retry_after

from .test_resource import ScriptedAgent, scripted


class ScriptedUpstream(Resource):
    """Answers each request with the next (status, headers, body), the last one forever."""

    isLeaf = True

    def __init__(self, clock: Clock, *answers: tuple[int, dict[bytes, bytes], bytes]) -> None:
        super().__init__()
        self.clock = clock
        self.answers = list(answers)
        self.times: list[float] = []
        self.methods: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.times.append(self.clock.seconds())
        self.methods.append(request.method)
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class Harness:
    """build_proxy on a Clock with in-memory upstreams (no sockets)."""

    def __init__(self, upstreams: dict[str, Resource], **options: Any) -> None:
        self.clock = Clock()
        options.setdefault("health_path", "")
        self.config = ProxyConfig(upstream=tuple(upstreams), **options)
        self.agent = RequestTraversalAgent(_Hosts(upstreams))
        self.proxy = build_proxy(self.config, self.clock, agent=self.agent, random=lambda: 0.5)
        self.client = StubTreq(self.proxy.resource)

    def flush(self) -> None:
        for _ in range(4):
            self.agent.flush()
            self.client.flush()

    def advance(self, *steps: float) -> None:
        for step in steps:
            self.clock.advance(step)
            self.flush()

    def request(self, method: str = "GET", path: str = "/api/proxy/a", **kwargs: Any) -> Any:
        d = self.client.request(method, "http://proxy.test" + path, **kwargs)
        self.flush()
        return d

    def body(self, response: Any) -> Any:
        d = treq.content(response)
        self.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        return results[0]


class _Hosts(Resource):
    """Routes a traversal agent's requests to a resource per upstream host:port."""

    isLeaf = True

    def __init__(self, upstreams: dict[str, Resource]) -> None:
        super().__init__()
        self.by_host = {url.split("/")[2].encode(): resource for url, resource in upstreams.items()}

    def render(self, request: Request) -> Any:
        resource = self.by_host[request.getHeader(b"host") or b""]
        return resource.render(request)


UP_A = "http://a.test:3101/api"
UP_B = "http://b.test:3101/api"
OK = (200, {b"content-type": b"application/json"}, b'{"ok":true}')
UNAVAILABLE = (503, {b"content-type": b"text/plain"}, b"busy, come back")


class UpstreamAnswerTests(SynchronousTestCase):
    def test_get_503_retried_then_passed_through(self) -> None:
        """A GET answered 503 is retried (1 s, 2 s); after the last try the 503 is passed on as sent."""
        clock_upstream = ScriptedUpstream(Clock(), UNAVAILABLE)
        h = Harness({UP_A: clock_upstream})
        clock_upstream.clock = h.clock
        d = h.request()
        h.advance(1, 2)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        self.assertEqual(h.body(response), b"busy, come back")
        self.assertEqual(clock_upstream.times, [0, 1, 3])

    def test_get_503_then_ok(self) -> None:
        """A GET whose first try gets 503 and second 200 gets the 200."""
        upstream = ScriptedUpstream(Clock(), UNAVAILABLE, OK)
        h = Harness({UP_A: upstream})
        d = h.request()
        h.advance(1)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_post_503_not_retried(self) -> None:
        """A POST answered 503 is passed on at once: the backend may have acted on it."""
        upstream = ScriptedUpstream(Clock(), UNAVAILABLE, OK)
        h = Harness({UP_A: upstream})
        d = h.request("POST", data=b"{}")
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(upstream.methods), 1)

    def test_post_with_key_retried(self) -> None:
        """A POST with an Idempotency-Key answered 503 is retried."""
        upstream = ScriptedUpstream(Clock(), UNAVAILABLE, OK)
        h = Harness({UP_A: upstream})
        d = h.request("POST", data=b"{}", headers={"Idempotency-Key": ["k1"]})
        h.advance(1)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(upstream.methods, [b"POST", b"POST"])

    def test_retry_after_sets_wait(self) -> None:
        """An upstream 503 with Retry-After: 2 makes the next try wait 2 s, not the backoff."""
        upstream = ScriptedUpstream(Clock(), (503, {b"retry-after": b"2"}, b""), OK)
        h = Harness({UP_A: upstream})
        upstream.clock = h.clock
        d = h.request()
        h.advance(1.9)
        self.assertNoResult(d)
        h.advance(0.1)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(upstream.times, [0, 2])

    def test_long_retry_after_passed_through(self) -> None:
        """A Retry-After longer than --max-retry-after is passed to the client at once."""
        upstream = ScriptedUpstream(Clock(), (503, {b"retry-after": b"60"}, b""), OK)
        h = Harness({UP_A: upstream})
        d = h.request()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["60"])
        self.assertEqual(len(upstream.methods), 1)

    def test_429(self) -> None:
        """A 429 with Retry-After is waited for and retried; one without is passed on."""
        upstream = ScriptedUpstream(Clock(), (429, {b"retry-after": b"1"}, b""), OK)
        h = Harness({UP_A: upstream})
        d = h.request()
        h.advance(1)
        self.assertEqual(self.successResultOf(d).code, 200)
        plain = ScriptedUpstream(Clock(), (429, {}, b"slow down"), OK)
        h = Harness({UP_A: plain})
        self.assertEqual(self.successResultOf(h.request()).code, 429)

    def test_retry_after_date(self) -> None:
        """Retry-After as an HTTP date is read relative to the clock."""
        self.assertEqual(parse_retry_after([b"Thu, 01 Jan 1970 00:00:05 GMT"], 2.0), 3.0)
        self.assertEqual(parse_retry_after([b"7"], 0), 7.0)
        self.assertIsNone(parse_retry_after([b"soon"], 0))
        self.assertIsNone(parse_retry_after(None, 0))


class DeadlineTests(SynchronousTestCase):
    def test_deadline_cuts_a_hanging_try(self) -> None:
        """With --deadline 5 a hanging GET ends at 5 s with 504, though --timeout is 30."""
        h, agent = scripted([None, None, None], deadline=5)
        d = h.client.get("http://proxy.test/api/proxy/a")
        h.flush()
        h.advance(4.9)
        self.assertNoResult(d)
        h.advance(0.1)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(len(agent.tries), 1)

    def test_wait_past_deadline_not_started(self) -> None:
        """A backoff wait that would end past the deadline is not started: the last failure is returned."""
        h, agent = scripted([ConnectionRefusedError()] * 10, deadline=10, attempts=10, backoff=2)
        d = h.client.get("http://proxy.test/api/proxy/a")
        h.flush()
        h.advance(2)
        h.advance(4)  # tries at 0, 2, 6; the next wait (6 s) would end at 12
        response = self.successResultOf(d)
        self.assertEqual(agent.tries, [0, 2, 6])
        self.assertEqual(response.code, 503)
        body = json.loads(self.successResultOf(treq.content(response)))
        self.assertEqual(body["details"]["errorType"], "ECONNREFUSED")
        self.assertEqual(body["details"]["durationMs"], 6000)

    def test_try_timeout_is_min_of_timeout_and_time_left(self) -> None:
        """Each try's timeout is min(--timeout, time left)."""
        h, agent = scripted([None, None, None], deadline=2.5, timeout=1, backoff=0.5)
        d = h.client.get("http://proxy.test/api/proxy/a")
        h.flush()
        h.advance(1)  # try 1 times out at 1; wait 0.5
        h.advance(0.5)  # try 2 at 1.5; times out at 2.5 (time left 1 > timeout 1)
        h.advance(1)
        response = self.successResultOf(d)
        self.assertEqual(agent.tries, [0, 1.5])
        self.assertEqual(response.code, 504)


class JitterTests(SynchronousTestCase):
    def test_full_jitter_and_cap(self) -> None:
        """With --jitter the wait is random * backoff * k, and --max-backoff caps it."""
        policy = RetryPolicy(attempts=5, backoff=10, jitter=True, max_backoff=15)
        self.assertEqual(policy.backoff_delay(1, random=0.5), 5)
        self.assertEqual(policy.backoff_delay(2, random=0.5), 7.5)
        self.assertEqual(policy.backoff_delay(3, random=0.0), 0)
        plain = RetryPolicy(attempts=5, backoff=10, max_backoff=15)
        self.assertEqual(plain.backoff_delay(2, random=0.5), 15)

    def test_jitter_through_the_proxy(self) -> None:
        """The injected random source sets the proxy's waits."""
        h = Harness({UP_A: ScriptedUpstream(Clock(), UNAVAILABLE, OK)}, jitter=True)
        d = h.request()
        h.advance(0.49)
        self.assertNoResult(d)
        h.advance(0.01)  # 0.5 * 1 s
        self.assertEqual(self.successResultOf(d).code, 200)


class BudgetTests(SynchronousTestCase):
    def test_floor(self) -> None:
        """A quiet service may still retry 5 times a second over the window."""
        clock = Clock()
        budget = RetryBudget(clock, 0.2)
        budget.record_request()
        self.assertEqual(sum(budget.allow_retry() for _ in range(60)), 50)
        clock.advance(10)
        self.assertTrue(budget.allow_retry(), "the window slid")

    def test_ten_second_window(self) -> None:
        """By default the budget counts the last 10 s: requests and retries older than that no longer count."""
        clock = Clock()
        budget = RetryBudget(clock, 0.2, min_per_second=0)
        for _ in range(10):
            budget.record_request()
        self.assertEqual(sum(budget.allow_retry() for _ in range(5)), 2)
        clock.advance(9.99)
        self.assertFalse(budget.allow_retry(), "the window still holds both retries")
        for _ in range(5):
            budget.record_request()  # 15 requests in the window: 3 retries
        self.assertTrue(budget.allow_retry())
        self.assertFalse(budget.allow_retry())
        clock.advance(0.01)  # t = 10: the first 10 requests and 2 retries leave the window
        self.assertEqual(budget.retries_in_window, 1)
        self.assertFalse(budget.allow_retry(), "5 requests left: 1 retry, already taken")
        clock.advance(9.99)  # the rest leave too
        self.assertEqual(budget.retries_in_window, 0)
        self.assertFalse(budget.allow_retry(), "no requests in the window, no floor")

    def test_fraction(self) -> None:
        """With many requests, retries are at most 20% of them."""
        clock = Clock()
        budget = RetryBudget(clock, 0.2)
        for _ in range(1000):
            budget.record_request()
        self.assertEqual(sum(budget.allow_retry() for _ in range(1000)), 200)
        self.assertEqual(budget.retries_in_window, 200)

    def test_outage_amplification(self) -> None:
        """Under a total outage 1,000 GETs cause at most 1.2 upstream tries each."""
        upstream = ScriptedUpstream(Clock(), UNAVAILABLE)
        h = Harness({UP_A: upstream}, backoff=0, eject_after=0)
        pending = [h.request("GET", f"/api/proxy/{i}") for i in range(1000)]
        h.advance(0, 0, 0)
        self.assertTrue(all(d.called for d in pending))
        self.assertLessEqual(len(upstream.methods), 1200)
        self.assertGreaterEqual(len(upstream.methods), 1000)


class SeveralUpstreamsTests(SynchronousTestCase):
    def test_round_robin(self) -> None:
        """Requests alternate between two healthy upstreams."""
        a, b = ScriptedUpstream(Clock(), OK), ScriptedUpstream(Clock(), OK)
        h = Harness({UP_A: a, UP_B: b})
        for _ in range(4):
            self.assertEqual(self.successResultOf(h.request()).code, 200)
        self.assertEqual((len(a.methods), len(b.methods)), (2, 2))

    def test_retry_goes_elsewhere(self) -> None:
        """A retry goes to the other upstream."""
        a, b = ScriptedUpstream(Clock(), UNAVAILABLE), ScriptedUpstream(Clock(), OK)
        h = Harness({UP_A: a, UP_B: b})
        d = h.request()
        h.advance(1)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual((len(a.methods), len(b.methods)), (1, 1))

    def test_least_in_flight(self) -> None:
        """least-in-flight sends a new request to the upstream with fewer tries under way."""
        agent = ScriptedAgent(Clock(), [None] * 10)
        proxy = build_proxy(
            ProxyConfig(upstream=(UP_A, UP_B), health_path="", balance="least-in-flight"),
            agent.clock,
            agent=agent,
        )
        balancer = proxy.balancer
        a, b = balancer.upstreams
        a.in_flight = 3
        self.assertIs(balancer.choose(), b)
        b.in_flight = 5
        self.assertIs(balancer.choose(), a)

    def test_health_per_upstream(self) -> None:
        """An upstream whose health check fails gets no new requests; the other takes them."""
        a, b = ScriptedUpstream(Clock(), OK), ScriptedUpstream(Clock(), OK)
        h = Harness({UP_A: a, UP_B: b}, health_path="/api/health")
        h.proxy.service.startService()
        h.flush()
        upstream_a = h.proxy.balancer.upstreams[0]
        assert upstream_a.health is not None
        upstream_a.health.mark_down("health check answered HTTP 503")
        for _ in range(4):
            self.assertEqual(self.successResultOf(h.request()).code, 200)
        self.assertEqual(a.methods.count(b"GET"), 1, "only its health check")
        h.proxy.service.stopService()
