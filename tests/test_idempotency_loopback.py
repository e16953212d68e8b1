"""
Idempotency-Key over real sockets: concurrent duplicates, replays, key reuse
and credentials; and a real Redis shared by two proxy processes, stopped
mid-run (fail open, or 503 with --idempotency-fail-closed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .helpers import LoopbackMixin, json_of, reactor, refused_port
from .test_cli import Child, get, start_backend, start_proxy_process


class SlowJobs(Resource):
    """Answers a POST after 0.3 s, counting calls."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Request) -> Any:
        self.calls += 1
        number = self.calls

        def answer() -> None:
            request.setResponseCode(201)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"job": number, "created": time.time()}).encode())
            request.finish()

        reactor.callLater(0.3, answer)
        return NOT_DONE_YET


class IdempotencyOverSockets(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_double_submission(self) -> Any:
        """Two concurrent POSTs with one key reach the backend once; a third gets a byte-identical replay."""
        upstream = SlowJobs()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        key = Headers({b"idempotency-key": [b"gen-42"], b"authorization": [b"Bearer alice"]})
        results = yield gatherResults(
            [self.fetch(b"POST", proxy + "/api/proxy/videos", b'{"prompt":"cat"}', key) for _ in range(2)]
        )
        codes = sorted(r.code for r, _ in results)
        self.assertIn(codes, ([201, 409], [201, 201]))
        self.assertEqual(upstream.calls, 1)
        first_body = next(body for r, body in results if r.code == 201)
        response, body = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b'{"prompt":"cat"}', key)
        self.assertEqual(response.code, 201)
        self.assertEqual(body, first_body)
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(upstream.calls, 1)

        response, content = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b'{"prompt":"dog"}', key)
        self.assertEqual(response.code, 422)
        self.assertEqual(json_of(content)["details"]["errorType"], "IDEMPOTENCY_KEY_REUSED")

        bob = Headers({b"idempotency-key": [b"gen-42"], b"authorization": [b"Bearer bob"]})
        response, body = yield self.fetch(b"POST", proxy + "/api/proxy/videos", b'{"prompt":"cat"}', bob)
        self.assertEqual(response.code, 201)
        self.assertIsNone(response.headers.getRawHeaders(b"idempotent-replayed"))
        self.assertNotEqual(body, first_body)
        self.assertEqual(upstream.calls, 2)


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

    def count(self, backend_port: int) -> int:
        return int(json.loads(get(f"http://127.0.0.1:{backend_port}/api/__count")[2]).get("POST", 0))

    def test_shared_between_processes(self) -> None:
        """Two proxy processes share Redis: a POST through one is replayed by the other, one backend call."""
        _redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        first = self.proxy(backend_port, redis_port)
        second = self.proxy(backend_port, redis_port)
        time.sleep(0.3)
        status, _, body = post(first + "/api/proxy/videos", "shared-1")
        self.assertEqual(status, 200)
        status, headers, replayed = post(second + "/api/proxy/videos", "shared-1")
        self.assertEqual(status, 200)
        self.assertEqual(replayed, body)
        self.assertEqual(headers.get("Idempotent-Replayed"), "true")
        self.assertEqual(self.count(backend_port), 1)

    def test_redis_down_fails_open(self) -> None:
        """With Redis stopped mid-run requests keep flowing, without deduplication."""
        redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        proxy = self.proxy(backend_port, redis_port)
        time.sleep(0.3)
        self.assertEqual(post(proxy + "/api/proxy/videos", "open-1")[0], 200)
        redis.stop()
        for attempt in range(3):
            status, _, _ = post(proxy + "/api/proxy/videos", f"open-{attempt + 2}")
            self.assertEqual(status, 200)
        self.assertEqual(self.count(backend_port), 4)

    def test_redis_down_fail_closed(self) -> None:
        """With --idempotency-fail-closed and Redis stopped, keyed POSTs get 503; others still flow."""
        redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        proxy = self.proxy(backend_port, redis_port, "--idempotency-fail-closed")
        time.sleep(0.3)
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
