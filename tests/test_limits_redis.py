"""
Rate limits shared through a real redis-server by two proxy processes
(twistd): together they accept no more than the limit; with Redis stopped
they serve (fail open), or answer 503 with --rate-limit-fail-closed; slots
in Redis, and a slot of a proxy that died expiring.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sora2proxy.limits._redis import redis_limit_store

from .helpers import eventually as eventually_async
from .test_cli import eventually, get, start_backend, start_proxy_process
from .test_idempotency_loopback import start_redis


def post(url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def limited(headers: dict[str, str]) -> bool:
    return any(name.lower() == "ratelimit" for name in headers)


class SharedRedisTests(SynchronousTestCase):
    def proxy(self, backend_port: int, redis_port: int, *extra: str) -> str:
        _, port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{backend_port}/api", "--health-path", "",
            "--rate-limit", "POST:/videos=5/h", "--rate-limit", "GET:/probe=1000/s",
            "--rate-limit-store", f"redis://127.0.0.1:{redis_port}/0", *extra,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        ready = eventually(lambda: limited(get(url + "/api/proxy/probe")[1]), seconds=10)
        self.assertTrue(ready, "the proxy never reached Redis")
        return url

    def test_two_processes_share_the_limit(self) -> None:
        """Two proxy processes on one Redis: 12 POSTs alternating between them, 5 accepted in all (5/h)."""
        _redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        first = self.proxy(backend_port, redis_port)
        second = self.proxy(backend_port, redis_port)
        statuses = [post((first, second)[n % 2] + "/api/proxy/videos")[0] for n in range(12)]
        self.assertEqual(statuses, [200] * 5 + [429] * 7)
        count = json.loads(get(f"http://127.0.0.1:{backend_port}/api/__count")[2]).get("POST", 0)
        self.assertEqual(count, 5)

    def test_redis_down(self) -> None:
        """Redis stopped: a proxy serves without limits; one with --rate-limit-fail-closed answers 503."""
        redis, redis_port = start_redis(self)
        backend_port = start_backend(self)
        open_proxy = self.proxy(backend_port, redis_port)
        closed_proxy = self.proxy(backend_port, redis_port, "--rate-limit-fail-closed")
        for _ in range(5):
            self.assertEqual(post(open_proxy + "/api/proxy/videos")[0], 200)
        self.assertEqual(post(closed_proxy + "/api/proxy/videos")[0], 429)
        redis.stop()
        for _ in range(3):
            status, headers, _ = post(open_proxy + "/api/proxy/videos")
            self.assertEqual(status, 200)
            self.assertFalse(limited(headers))
        status, headers, body = post(closed_proxy + "/api/proxy/videos")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["details"]["errorType"], "RATE_LIMIT_STORE_UNAVAILABLE")
        self.assertIn("Retry-After", headers)


class RedisSlotsTests(TestCase):
    @inlineCallbacks
    def test_slots(self) -> Any:
        """In Redis, a caller's slots are bounded, given back by release, and expire if never released."""
        _redis, port = start_redis(self)
        store = redis_limit_store(f"redis://127.0.0.1:{port}/0")
        self.addCleanup(store.redis.disconnect)
        first = yield store.acquire("k", 2, 60)
        self.assertIsNotNone((yield store.acquire("k", 2, 60)))
        self.assertIsNone((yield store.acquire("k", 2, 60)))
        self.assertIsNotNone((yield store.acquire("other", 2, 60)))
        yield store.release("k", first)
        self.assertIsNotNone((yield store.acquire("k", 2, 60)))
        self.assertIsNotNone((yield store.acquire("dies", 1, 0.2)))
        self.assertIsNone((yield store.acquire("dies", 1, 60)))
        yield eventually_async(lambda: store.acquire("dies", 1, 60), what="the dead slot expiring")
