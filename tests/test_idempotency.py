"""
Idempotency-Key at the proxy, on a Clock: replays, conflicts, key reuse,
credentials, what is stored and what releases a key, and the memory store's
bounds.
"""

from __future__ import annotations

import io
import json
from typing import Any

import treq
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.idempotency._memory import MemoryStore
from sora2proxy.idempotency._store import Entry, StoredResponse

UPSTREAM = "http://backend.test:3101/api"


class JobsUpstream(Resource):
    """Creates a job per POST; can hang, or answer with a large body.  (No Set-Cookie: StubTreq
    keeps cookies, and a cookie is a credential that scopes keys.)"""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bytes, bytes]] = []
        self.hang = False
        self.pending: list[Request] = []
        self.large = 0

    def render(self, request: Request) -> Any:
        assert request.content is not None
        body = request.content.read()
        self.calls.append((request.method, body))
        if self.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        request.responseHeaders.addRawHeader(b"x-job", b"1")
        request.responseHeaders.addRawHeader(b"x-job", b"one")
        if self.large:
            return b"x" * self.large
        return json.dumps({"job": len(self.calls), "body": body.decode()}).encode()


class Harness:
    def __init__(self, upstream: Resource | None = None, agent: Any = None, **options: Any) -> None:
        self.clock = Clock()
        self.upstream = upstream or JobsUpstream()
        self.agent = agent or RequestTraversalAgent(self.upstream)
        options.setdefault("health_path", "")
        self.config = ProxyConfig(upstream=UPSTREAM, **options)
        self.proxy = build_proxy(self.config, self.clock, agent=self.agent)
        self.client = StubTreq(self.proxy.resource)

    def flush(self) -> None:
        for _ in range(4):
            if hasattr(self.agent, "flush"):
                self.agent.flush()
            self.client.flush()

    def post(
        self, key: str | None, body: bytes = b'{"prompt":"cat"}', path: str = "/videos", **headers: str
    ) -> Any:
        sent = {name.replace("_", "-"): [value] for name, value in headers.items()}
        if key is not None:
            sent["Idempotency-Key"] = [key]
        d = self.client.post(
            "http://proxy.test/api/proxy" + path, data=body, headers=sent, allow_redirects=False
        )
        self.flush()
        return d

    def body(self, response: Any) -> bytes:
        d = treq.content(response)
        self.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        return results[0]  # type: ignore[no-any-return]


class BehaviourTests(SynchronousTestCase):
    def test_replay(self) -> None:
        """A repeat of a POST with the same key gets the stored answer, byte for byte, marked replayed."""
        h = Harness()
        first = self.successResultOf(h.post("k1"))
        first_body = h.body(first)
        second = self.successResultOf(h.post("k1"))
        self.assertEqual(second.code, 201)
        self.assertEqual(h.body(second), first_body)
        self.assertEqual(second.headers.getRawHeaders("idempotent-replayed"), ["true"])
        self.assertEqual(second.headers.getRawHeaders("x-job"), ["1", "one"])
        self.assertIsNone(first.headers.getRawHeaders("idempotent-replayed"))
        self.assertNotEqual(
            first.headers.getRawHeaders("x-request-id"), second.headers.getRawHeaders("x-request-id")
        )
        self.assertEqual(len(h.upstream.calls), 1)

    def test_in_flight_conflict(self) -> None:
        """The same key while the first request is still in flight gets 409 with Retry-After."""
        h = Harness()
        h.upstream.hang = True
        first = h.post("k2")
        self.assertNoResult(first)
        response = self.successResultOf(h.post("k2"))
        self.assertEqual(response.code, 409)
        self.assertTrue(response.headers.hasHeader("retry-after"))
        self.assertEqual(json.loads(h.body(response))["details"]["errorType"], "IDEMPOTENCY_IN_FLIGHT")
        self.assertEqual(len(h.upstream.calls), 1)

    def test_key_reused(self) -> None:
        """The same key with another body, path or query gets 422."""
        h = Harness()
        self.successResultOf(h.post("k3"))
        for other in (h.post("k3", body=b'{"prompt":"dog"}'), h.post("k3", path="/videos?x=1")):
            response = self.successResultOf(other)
            self.assertEqual(response.code, 422)
            self.assertEqual(json.loads(h.body(response))["details"]["errorType"], "IDEMPOTENCY_KEY_REUSED")
        self.assertEqual(len(h.upstream.calls), 1)

    def test_credentials_scope_keys(self) -> None:
        """The same key from another Authorization (or Cookie) is another user's: forwarded on its own."""
        h = Harness()
        self.successResultOf(h.post("k4", Authorization="Bearer alice"))
        bob = self.successResultOf(h.post("k4", Authorization="Bearer bob"))
        self.assertEqual(bob.code, 201)
        self.assertIsNone(bob.headers.getRawHeaders("idempotent-replayed"))
        carol = self.successResultOf(h.post("k4", Cookie="session=carol"))
        self.assertEqual(carol.code, 201)
        self.assertEqual(len(h.upstream.calls), 3)
        again = self.successResultOf(h.post("k4", Authorization="Bearer alice"))
        self.assertEqual(again.headers.getRawHeaders("idempotent-replayed"), ["true"])

    def test_other_methods_untouched(self) -> None:
        """A GET or PUT with a key passes through without being stored."""
        h = Harness()
        for _ in range(2):
            d = h.client.put(
                "http://proxy.test/api/proxy/videos/1", data=b"x", headers={"Idempotency-Key": ["k5"]}
            )
            h.flush()
            self.assertEqual(self.successResultOf(d).code, 201)
        self.assertEqual(len(h.upstream.calls), 2)

    def test_without_key_untouched(self) -> None:
        """POSTs without a key are forwarded every time."""
        h = Harness()
        self.successResultOf(h.post(None))
        self.successResultOf(h.post(None))
        self.assertEqual(len(h.upstream.calls), 2)

    def test_bad_keys(self) -> None:
        """A key over 255 characters, with control characters or sent twice gets 400."""
        h = Harness()
        for key in ("k" * 256, "a\tb", "caf\u00e9"):
            response = self.successResultOf(h.post(key))
            self.assertEqual(response.code, 400, key)
            self.assertEqual(json.loads(h.body(response))["details"]["errorType"], "IDEMPOTENCY_KEY_INVALID")
        d = h.client.post(
            "http://proxy.test/api/proxy/videos", data=b"{}", headers={"Idempotency-Key": ["a", "b"]}
        )
        h.flush()
        self.assertEqual(self.successResultOf(d).code, 400)
        self.assertEqual(len(h.upstream.calls), 0)
        self.assertEqual(self.successResultOf(h.post("k" * 255)).code, 201)

    def test_required(self) -> None:
        """--require-idempotency-key POST:/videos refuses such a POST without a key, saying how to send one."""
        h = Harness(require_idempotency_key=("POST:/videos",))
        response = self.successResultOf(h.post(None))
        self.assertEqual(response.code, 400)
        details = json.loads(h.body(response))["details"]
        self.assertEqual(details["errorType"], "IDEMPOTENCY_KEY_MISSING")
        self.assertIn("Idempotency-Key:", details["suggestion"])
        self.assertEqual(self.successResultOf(h.post(None, path="/other")).code, 201)
        self.assertEqual(self.successResultOf(h.post("k6")).code, 201)

    def test_ttl(self) -> None:
        """After --idempotency-ttl the key is forgotten and the request forwarded again."""
        h = Harness(idempotency_ttl=60)
        self.successResultOf(h.post("k7"))
        h.clock.advance(59)
        self.assertEqual(
            self.successResultOf(h.post("k7")).headers.getRawHeaders("idempotent-replayed"), ["true"]
        )
        h.clock.advance(1)
        self.assertIsNone(self.successResultOf(h.post("k7")).headers.getRawHeaders("idempotent-replayed"))
        self.assertEqual(len(h.upstream.calls), 2)

    def test_large_answer_not_stored(self) -> None:
        """An answer larger than --idempotency-max-body is forwarded but not stored."""
        h = Harness(idempotency_max_body=100)
        h.upstream.large = 500
        first = self.successResultOf(h.post("k8"))
        self.assertEqual(len(h.body(first)), 500)
        second = self.successResultOf(h.post("k8"))
        self.assertIsNone(second.headers.getRawHeaders("idempotent-replayed"))
        self.assertEqual(len(h.upstream.calls), 2)

    def test_off(self) -> None:
        """--idempotency-store off forwards every request with its key."""
        h = Harness(idempotency_store="off")
        self.successResultOf(h.post("k9"))
        self.successResultOf(h.post("k9"))
        self.assertEqual(len(h.upstream.calls), 2)


class StatusUpstream(Resource):
    """Answers every request with C{status}, counting calls."""

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.calls: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.calls.append(request.method)
        request.setResponseCode(self.status)
        if self.status in (301, 302):
            request.setHeader(b"location", b"/elsewhere")
        return b'{"status": %d}' % self.status


class StorageRuleTests(SynchronousTestCase):
    def calls_for(self, status: int) -> int:
        upstream = StatusUpstream(status)
        h = Harness(upstream, attempts=1)
        for _ in range(2):
            response = self.successResultOf(h.post("s1"))
            self.assertEqual(response.code, status)
        return len(upstream.calls)

    def test_busy_and_gateway_answers_not_stored(self) -> None:
        """An upstream 429, 502, 503 or 504 is not stored: the retry with the same key reaches the backend."""
        for status in (429, 502, 503, 504):
            self.assertEqual(self.calls_for(status), 2, status)

    def test_other_answers_stored(self) -> None:
        """A 2xx, 3xx, other 4xx or 500 is stored: the retry with the same key is a replay."""
        for status in (200, 202, 302, 400, 404, 409, 422, 500):
            self.assertEqual(self.calls_for(status), 1, status)


class ScriptedAgent:
    """Tries fail as scripted (an exception, or None to hang)."""

    def __init__(self, outcomes: list[Exception | None]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        return Deferred() if outcome is None else fail(outcome)


class ReleaseTests(SynchronousTestCase):
    def test_not_reached_frees_key(self) -> None:
        """When no try reached the upstream (refused), nothing is stored and the key is free again."""
        agent = ScriptedAgent([ConnectionRefusedError()] * 3)
        h = Harness(agent=agent, attempts=3, backoff=1)
        d = h.post("r1")
        h.clock.advance(1)
        h.clock.advance(2)
        h.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        details = json.loads(h.body(response))["details"]
        self.assertNotIn("outcomeUnknown", details)
        self.assertEqual(agent.calls, 3, "refused tries are retried even for a POST")
        h.post("r1")
        self.assertEqual(agent.calls, 4, "the key was free: forwarded again")

    def test_unknown_outcome_frees_key_and_says_so(self) -> None:
        """When a try may have reached the upstream but no answer came, the error says outcomeUnknown."""
        agent = ScriptedAgent([None, None, None])
        h = Harness(agent=agent, attempts=3, timeout=5, backoff=1)
        d = h.post("r2")
        for step in (5, 1, 5, 2, 5):
            h.clock.advance(step)
        h.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        details = json.loads(h.body(response))["details"]
        self.assertTrue(details["outcomeUnknown"])
        self.assertEqual(agent.calls, 3, "the key makes the POST retryable")
        h.post("r2")
        self.assertEqual(agent.calls, 4)

    def test_client_gone_frees_key(self) -> None:
        """A client that leaves before its request's body was handed to the upstream frees the key."""
        agent = ScriptedAgent([None])
        h = Harness(agent=agent)
        d = h.post("r3")
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        h.post("r3")
        self.assertEqual(agent.calls, 2)

    def test_client_gone_in_backoff_frees_key(self) -> None:
        """A client that leaves during the wait before a retry frees the key, and no further try is sent."""
        agent = ScriptedAgent([ConnectionRefusedError(), None])
        h = Harness(agent=agent, attempts=3, backoff=1)
        d = h.post("r5")
        self.assertEqual(agent.calls, 1)
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        h.clock.advance(5)
        self.assertEqual(agent.calls, 1)
        h.post("r5")
        self.assertEqual(agent.calls, 2, "the key was free: forwarded")

    def test_client_gone_after_body_sent_keeps_key(self) -> None:
        """A client that leaves once its whole request is with the upstream keeps the key held (409) until that try ends, with no further try."""
        agent = BodyTakingAgent()
        h = Harness(agent=agent, attempts=3, timeout=5, backoff=1)
        d = h.post("r6")
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        again = self.successResultOf(h.post("r6"))
        self.assertEqual(again.code, 409)
        h.clock.advance(5)  # the try times out
        h.clock.advance(0)
        h.clock.advance(10)
        self.assertEqual(agent.calls, 1, "no retry for a client that left")
        h.post("r6")
        self.assertEqual(agent.calls, 2, "the try ended without an answer: the key was freed")


class HeldRedirect(Resource):
    """Holds each POST until C{finish}, then answers 201 with a Location on the backend."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render(self, request: Request) -> Any:
        self.held.append(request)
        return NOT_DONE_YET

    def finish(self) -> None:
        for request in self.held:
            request.setResponseCode(201)
            request.setHeader(b"location", UPSTREAM.encode() + b"/videos/1")
            request.write(b"{}")
            request.finish()


class CarriedOnTests(SynchronousTestCase):
    def test_stored_location_keeps_https(self) -> None:
        """The answer stored for a client that left over HTTPS points its Location at https://, as that client would have got it."""
        upstream = HeldRedirect()
        h = Harness(upstream=upstream)
        d = h.client.post(
            "https://proxy.test/api/proxy/videos", data=b"{}", headers={"Idempotency-Key": ["r7"]}
        )
        h.flush()
        self.assertEqual(len(upstream.held), 1)
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        upstream.finish()
        h.flush()
        d = h.client.post(
            "https://proxy.test/api/proxy/videos", data=b"{}", headers={"Idempotency-Key": ["r7"]}
        )
        h.flush()
        replay = self.successResultOf(d)
        self.assertEqual(replay.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(
            replay.headers.getRawHeaders(b"location"), [b"https://proxy.test/api/proxy/videos/1"]
        )


class BodyTakingAgent:
    """Takes each try's whole body, then never answers."""

    def __init__(self) -> None:
        self.calls = 0

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.calls += 1
        if bodyProducer is not None:
            bodyProducer.startProducing(io.BytesIO())
        return Deferred()


class MemoryStoreTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        """100,000 distinct keys leave the store within its entry and byte bounds, oldest out first."""
        clock = Clock()
        store = MemoryStore(clock, max_entries=10_000, max_bytes=2 * 1024 * 1024, max_per_caller=100_000)
        answer = StoredResponse(201, b"Created", ((b"content-type", (b"application/json",)),), b"x" * 100)
        for i in range(100_000):
            key = f"key-{i}"
            self.assertIsNone(self.successResultOf(store.claim("c", key, "f", 60)))
            store.complete("c", key, Entry("f", answer), 3600)
            self.assertLessEqual(store.size(), 10_000)
            self.assertLessEqual(store.stored_bytes, 2 * 1024 * 1024)
        self.assertIsNone(self.successResultOf(store.claim("c", "key-0", "f", 60)), "evicted long ago")
        self.assertIsNotNone(self.successResultOf(store.claim("c", "key-99999", "f", 60)))

    def test_lru(self) -> None:
        """A stored answer read recently survives eviction; the least recently used goes."""
        store = MemoryStore(Clock(), max_entries=2)
        answer = StoredResponse(201, b"Created", (), b"{}")
        for key in ("a", "b"):
            store.claim("c", key, "f", 60)
            store.complete("c", key, Entry("f", answer), 3600)
        store.claim("c", "a", "f", 60)  # touch a
        store.claim("c", "c", "f", 60)
        self.assertIsNotNone(self.successResultOf(store.claim("c", "a", "f", 60)))
        self.assertIsNone(self.successResultOf(store.claim("c", "b", "f", 60)))

    def test_entry_round_trip(self) -> None:
        """An entry survives serialisation for Redis, binary body included."""
        answer = StoredResponse(200, b"OK", ((b"set-cookie", (b"a=1", b"b=2")),), bytes(range(256)))
        self.assertEqual(Entry.from_bytes(Entry("fp", answer).to_bytes()), Entry("fp", answer))
        self.assertEqual(Entry.from_bytes(Entry("fp").to_bytes()), Entry("fp"))
