"""
Idempotency-Key over real sockets: concurrent duplicates, replays byte-equal
to the live answer, key reuse, callers kept apart (X-Api-Key), busy answers
not stored, a store flood; a real Redis shared by two proxy processes, stopped
mid-run (fail open, or 503 with --idempotency-fail-closed), and its
per-caller bound.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredList, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from sora2proxy.idempotency._store import Entry, StoredResponse, StoreFull, redis_store

from .helpers import LoopbackMixin, json_of, reactor, refused_port
from .test_cli import Child, eventually, get, start_backend, start_proxy_process


@inlineCallbacks
def eventually_true(check: Callable[[], bool], seconds: float = 10) -> Any:
    """Fires once C{check()} holds (looked at every 10 ms), fails after C{seconds}."""
    for _ in range(int(seconds * 100)):
        if check():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the condition never held")


class HeldJobs(Resource):
    """Holds each POST until the test releases it; answers with the caller's X-Api-Key, counting calls."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.held: list[Request] = []
        self.hold = True
        self.status = 201

    def render(self, request: Request) -> Any:
        self.calls += 1
        if self.hold and b"/fast" not in request.path:
            self.held.append(request)
            return NOT_DONE_YET
        return self.answer(request)

    def answer(self, request: Request) -> bytes:
        owner = (request.getHeader(b"x-api-key") or b"").decode()
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"job": self.calls, "owner": owner}).encode()

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.write(self.answer(request))
            request.finish()


class IdempotencyOverSockets(LoopbackMixin, TestCase):
    def setup(self, **options: Any) -> tuple[str, HeldJobs]:
        upstream = HeldJobs()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", **options)
        return proxy + "/api/proxy", upstream

    @inlineCallbacks
    def test_double_submission(self) -> Any:
        """Two concurrent POSTs with one key reach the backend once (the other gets 409); a third gets a byte-identical replay."""
        proxy, upstream = self.setup()
        key = Headers({b"idempotency-key": [b"gen-42"], b"authorization": [b"Bearer alice"]})
        both = [self.fetch(b"POST", proxy + "/videos", b'{"prompt":"cat"}', key) for _ in range(2)]
        yield DeferredList(both, fireOnOneCallback=True)  # the second one, refused while the first is held
        yield eventually_true(lambda: len(upstream.held) == 1)
        upstream.release()
        results = yield gatherResults(both)
        self.assertEqual(sorted(r.code for r, _ in results), [201, 409])
        self.assertEqual(upstream.calls, 1)
        first_body = next(body for r, body in results if r.code == 201)
        response, body = yield self.fetch(b"POST", proxy + "/videos", b'{"prompt":"cat"}', key)
        self.assertEqual(response.code, 201)
        self.assertEqual(body, first_body)
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(upstream.calls, 1)

        response, content = yield self.fetch(b"POST", proxy + "/videos", b'{"prompt":"dog"}', key)
        self.assertEqual(response.code, 422)
        self.assertEqual(json_of(content)["details"]["errorType"], "IDEMPOTENCY_KEY_REUSED")

        bob = Headers({b"idempotency-key": [b"gen-42"], b"authorization": [b"Bearer bob"]})
        response, body = yield self.fetch(b"POST", proxy + "/videos/fast", b'{"prompt":"cat"}', bob)
        self.assertEqual(response.code, 201)
        self.assertIsNone(response.headers.getRawHeaders(b"idempotent-replayed"))
        self.assertEqual(upstream.calls, 2)

    @inlineCallbacks
    def test_api_key_users_apart(self) -> Any:
        """One key and body from X-Api-Key alice, then bob: bob's request is forwarded and never gets alice's answer."""
        proxy, upstream = self.setup()
        for who in (b"alice", b"bob", b"alice"):
            headers = Headers({b"idempotency-key": [b"same-key"], b"x-api-key": [who]})
            response, body = yield self.fetch(b"POST", proxy + "/videos/fast", b'{"prompt":"cat"}', headers)
            self.assertEqual(response.code, 201)
            self.assertEqual(json_of(body)["owner"], who.decode())
        self.assertEqual(upstream.calls, 2, "alice's second POST is her replay")
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])

    @inlineCallbacks
    def test_busy_answers_not_pinned(self) -> Any:
        """An upstream 503 or 429 to a keyed POST is not stored: the retry with the same key reaches the backend."""
        proxy, upstream = self.setup(attempts=1)
        for status in (503, 429):
            upstream.status = status
            headers = Headers({b"idempotency-key": [b"busy-%d" % status]})
            response, _ = yield self.fetch(b"POST", proxy + "/videos/fast", b"{}", headers)
            self.assertEqual(response.code, status)
            upstream.status = 201
            before = upstream.calls
            response, _ = yield self.fetch(b"POST", proxy + "/videos/fast", b"{}", headers)
            self.assertEqual((response.code, upstream.calls), (201, before + 1))
            self.assertIsNone(response.headers.getRawHeaders(b"idempotent-replayed"))

    @inlineCallbacks
    def test_store_flood(self) -> Any:
        """1,100 fresh keys from one caller, past a 500-entry store, leave a victim's stored answer and in-flight job intact."""
        proxy, upstream = self.setup(idempotency_max_entries=500)
        victim = Headers({b"idempotency-key": [b"paid"], b"x-api-key": [b"victim"]})
        _, paid = yield self.fetch(b"POST", proxy + "/videos/fast", b"{}", victim)
        slow = Headers({b"idempotency-key": [b"slow"], b"x-api-key": [b"victim"]})
        running = self.fetch(b"POST", proxy + "/videos", b"{}", slow)
        yield eventually_true(lambda: len(upstream.held) == 1)
        pool = HTTPConnectionPool(reactor)
        pool.maxPersistentPerHost = 20
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)

        @inlineCallbacks
        def flood(i: int) -> Any:
            headers = Headers({b"idempotency-key": [b"f%d" % i]})
            response = yield agent.request(b"POST", (proxy + "/videos/fast").encode(), headers, None)
            yield readBody(response)
            return response.code

        for batch in range(0, 1100, 20):  # past the store's 500 and a caller's default 1,000
            codes = yield gatherResults([flood(i) for i in range(batch, batch + 20)])
            self.assertEqual(set(codes), {201})
        response, body = yield self.fetch(b"POST", proxy + "/videos/fast", b"{}", victim)
        self.assertEqual((response.code, body), (201, paid))
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        response, _ = yield self.fetch(b"POST", proxy + "/videos", b"{}", slow)
        self.assertEqual(response.code, 409, "the victim's job is still in flight, not run twice")
        upstream.release()
        response, _ = yield running
        self.assertEqual(response.code, 201)
        self.assertEqual(upstream.calls, 2 + 1100)

    @inlineCallbacks
    def test_claims_full_refused(self) -> Any:
        """When a caller's share is full of requests in flight, a new key gets 503 with Retry-After and is never sent."""
        proxy, upstream = self.setup(idempotency_max_per_caller=3)
        held = [
            self.fetch(b"POST", proxy + "/videos", b"{}", Headers({b"idempotency-key": [b"h%d" % i]}))
            for i in range(3)
        ]
        yield eventually_true(lambda: len(upstream.held) == 3)
        response, body = yield self.fetch(
            b"POST", proxy + "/videos", b"{}", Headers({b"idempotency-key": [b"h3"]})
        )
        self.assertEqual(response.code, 503)
        self.assertTrue(response.headers.hasHeader(b"retry-after"))
        self.assertEqual(json_of(body)["details"]["errorType"], "IDEMPOTENCY_STORE_FULL")
        self.assertEqual(upstream.calls, 3)
        upstream.release()
        yield gatherResults(held)


class SecretUpstream(Protocol):
    """Answers one request with exact bytes: a header named in Connection and a Location to itself."""

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or not self.buffer.endswith(b"}"):
            return
        assert self.transport is not None
        here = self.transport.getHost()
        body = b'{"id":"video_1"}'
        self.transport.write(
            b"HTTP/1.1 201 Created\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            b"Content-Type: application/json\r\nConnection: X-Secret\r\n"
            b"X-Secret: internal-token\r\nLocation: http://127.0.0.1:%d/api/videos/1\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (here.port, len(body), body)
        )
        self.transport.loseConnection()


def raw_post(port: int, key: bytes) -> bytes:
    """POST over a raw socket, with a fixed X-Request-ID; every byte of the answer."""
    body = b'{"prompt":"cat"}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/proxy/videos HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nIdempotency-Key: %s\r\n"
            b"X-Request-ID: req-1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (port, key, len(body), body)
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


class ReplayBytes(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_replay_is_the_live_answer(self) -> Any:
        """A replay is byte for byte the live answer (X-Secret dropped, Location rewritten), apart from Idempotent-Replayed and Date."""
        listening = reactor.listenTCP(0, Factory.forProtocol(SecretUpstream), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        upstream = f"http://127.0.0.1:{listening.getHost().port}/api"
        proxy, _ = self.start_proxy(upstream=upstream, health_path="")
        port = int(proxy.rsplit(":", 1)[1])
        live = yield deferToThread(raw_post, port, b"bytes-1")
        replay = yield deferToThread(raw_post, port, b"bytes-1")
        self.assertTrue(live.startswith(b"HTTP/1.1 201 Created\r\n"), live)
        self.assertNotIn(b"internal-token", live)
        self.assertIn(b"\r\nLocation: http://127.0.0.1:%d/api/proxy/videos/1\r\n" % port, live)
        self.assertIn(b"\r\nIdempotent-Replayed: true\r\n", replay)
        self.assertIn(b"\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n", live)
        self.assertNotIn(b"1994", replay, "a replay carries its own Date, not the stored answer's")
        self.assertEqual(replay.lower().count(b"\r\ndate: "), 1)

        def without_date(answer: bytes, *dropped: bytes) -> bytes:
            lines = answer.split(b"\r\n")
            return b"\r\n".join(line for line in lines if not line.lower().startswith((b"date:", *dropped)))

        self.assertEqual(without_date(replay, b"idempotent-replayed:"), without_date(live))


def start_redis(test: SynchronousTestCase) -> tuple[Child, int]:
    server = shutil.which("redis-server")
    if server is None:
        raise SkipTest("no redis-server on this machine (.ci/run installs Debian's redis-server)")
    port = refused_port()
    redis = Child(
        test,
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    redis.wait_for("Ready to accept connections")
    return redis, port


def post(url: str, key: str, body: bytes = b'{"prompt":"cat"}') -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class RedisTests(SynchronousTestCase):
    def proxy(self, backend_port: int, redis_port: int, *extra: str) -> str:
        _, port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{backend_port}/api",
            "--idempotency-store", f"redis://127.0.0.1:{redis_port}/0", *extra,
        )  # fmt: skip
        return f"http://127.0.0.1:{port}"

    def store_ready(self, proxy: str) -> None:
        """Wait until the proxy's Redis connection works: a probe key is replayed."""
        probes = iter(range(10_000))

        def replayed() -> bool:
            key = f"probe-{next(probes)}"
            post(proxy + "/api/proxy/probe", key)
            return post(proxy + "/api/proxy/probe", key)[1].get("Idempotent-Replayed") == "true"

        self.assertTrue(eventually(replayed, seconds=10), "the proxy never reached Redis")

    def count(self, backend_port: int) -> int:
        return int(json.loads(get(f"http://127.0.0.1:{backend_port}/api/__count")[2]).get("POST", 0))

    def test_shared_between_processes(self) -> None:
        """Two proxy processes share Redis: a POST through one is replayed by the other, one backend call."""
        _redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        first = self.proxy(backend_port, redis_port)
        second = self.proxy(backend_port, redis_port)
        self.store_ready(first)
        self.store_ready(second)
        before = self.count(backend_port)
        status, _, body = post(first + "/api/proxy/videos", "shared-1")
        self.assertEqual(status, 200)
        # The answer is stored just after it reached the client: a repeat in
        # that moment gets 409 (retry), never a second job.
        answers: list[tuple[int, dict[str, str], bytes]] = []
        eventually(
            lambda: answers.append(post(second + "/api/proxy/videos", "shared-1")) or answers[-1][0] != 409
        )
        status, headers, replayed = answers[-1]
        self.assertEqual(status, 200)
        self.assertEqual(replayed, body)
        self.assertEqual(headers.get("Idempotent-Replayed"), "true")
        self.assertEqual(self.count(backend_port), before + 1)

    def test_redis_down_fails_open(self) -> None:
        """With Redis stopped mid-run requests keep flowing, without deduplication."""
        redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        proxy = self.proxy(backend_port, redis_port)
        self.store_ready(proxy)
        before = self.count(backend_port)
        self.assertEqual(post(proxy + "/api/proxy/videos", "open-1")[0], 200)
        redis.stop()
        for attempt in range(3):
            status, _, _ = post(proxy + "/api/proxy/videos", f"open-{attempt + 2}")
            self.assertEqual(status, 200)
        self.assertEqual(self.count(backend_port), before + 4)

    def test_redis_down_fail_closed(self) -> None:
        """With --idempotency-fail-closed and Redis stopped, keyed POSTs get 503; others still flow."""
        redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        proxy = self.proxy(backend_port, redis_port, "--idempotency-fail-closed")
        self.store_ready(proxy)
        self.assertEqual(post(proxy + "/api/proxy/videos", "closed-1")[0], 200)
        redis.stop()
        status, headers, body = post(proxy + "/api/proxy/videos", "closed-2")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["details"]["errorType"], "IDEMPOTENCY_STORE_UNAVAILABLE")
        self.assertIn("Retry-After", headers)
        request = urllib.request.Request(proxy + "/api/proxy/videos", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=15) as response:
            self.assertEqual(response.status, 200)


__all__ = ["subprocess"]


class RedisBoundsTests(TestCase):
    @inlineCallbacks
    def test_per_caller_bound(self) -> Any:
        """In Redis too, a caller's claims are never evicted, its own oldest answer makes room, and another caller's stays."""
        _redis, port = start_redis(self)
        store = redis_store(f"redis://127.0.0.1:{port}/0", max_per_caller=3)
        self.addCleanup(store.redis.disconnect)
        answer = StoredResponse(201, b"Created", ((b"via", (b"1.1 sora2proxy",)),), b'{"job":1}')
        self.assertIsNone((yield store.claim("victim", "paid", "f", 60)))
        yield store.complete("victim", "paid", Entry("f", answer), 3600)
        self.assertIsNone((yield store.claim("victim", "slow", "f", 60)))
        for i in range(3):
            self.assertIsNone((yield store.claim("flood", f"x{i}", "f", 60)))
        with self.assertRaises(StoreFull):
            yield store.claim("flood", "x3", "f", 60)
        yield store.complete("flood", "x0", Entry("f", answer), 3600)
        self.assertIsNone((yield store.claim("flood", "x3", "f", 60)), "its own answer x0 made room")
        self.assertEqual((yield store.claim("victim", "paid", "other", 60)), Entry("f", answer))
        self.assertEqual((yield store.claim("victim", "slow", "other", 60)), Entry("f"))
        yield store.release("victim", "slow")
        self.assertIsNone((yield store.claim("victim", "slow", "f", 60)))
