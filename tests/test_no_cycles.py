"""
A finished request leaves no reference cycle behind: everything it made is
freed by reference counting the moment it ends, not by a later pass of the
garbage collector (whose passes over each request's leftovers cost about a
twelfth of the proxy's CPU per request before).  Over real loopback sockets,
with the proxy's own channel, on one keep-alive connection.
"""

from __future__ import annotations

import gc
import re
from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from .helpers import LoopbackMixin, RecordingUpstream, reactor, refused_port

_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)\r\n", re.IGNORECASE)


class KeepAliveClient(Protocol):
    """Sends one request at a time on one connection; each answer has a Content-Length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: Deferred[bytes] | None = None

    def ask(self, request: bytes) -> Deferred[bytes]:
        assert self.transport is not None
        self.waiting = Deferred()
        self.transport.write(request)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        found = _LENGTH.search(self.buffer[: end + 2]) if end >= 0 else None
        if found is None or len(self.buffer) < end + 4 + int(found.group(1)):
            return
        answer, self.buffer = self.buffer[: end + 4 + int(found.group(1))], b""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(answer)

    def connectionLost(self, reason: Failure | None = None) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(self.buffer)


def left_in_cycles() -> Counter[str]:
    """The package's objects that only the garbage collector would have freed, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(
            type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("sora2proxy")
        )
    finally:
        gc.garbage.clear()
        gc.set_debug(0)


class NoCyclesTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def requests_on_one_connection(self, proxy: str, requests: list[bytes]) -> Any:
        client = KeepAliveClient()
        port = int(proxy.rsplit(":", 1)[1])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport else None)
        yield client.ask(requests[0])  # the first: the upstream connection is made and pooled
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        answers = []
        for request in requests[1:]:
            answers.append((yield client.ask(request)))
        return answers

    @inlineCallbacks
    def test_answered_requests(self) -> Any:
        """GETs, POSTs with a body and an upstream's 500 leave nothing for the collector."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        get = b"GET /api/proxy/a HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
        post = b'POST /api/proxy/jobs HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 7\r\n\r\n{"a":1}'
        answers = yield self.requests_on_one_connection(proxy, [get] + [get, post] * 10)
        self.assertEqual([a.split(b" ", 2)[1] for a in answers], [b"200"] * 20)
        self.assertEqual(dict(left_in_cycles()), {})

    @inlineCallbacks
    def test_upstream_errors_passed_on(self) -> Any:
        """An upstream's 500s, passed on as they are, leave nothing for the collector."""
        upstream = RecordingUpstream("status:500")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        post = b"POST /api/proxy/jobs HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\n\r\n{}"
        answers = yield self.requests_on_one_connection(proxy, [post] * 11)
        self.assertEqual([a.split(b" ", 2)[1] for a in answers], [b"500"] * 10)
        self.assertEqual(dict(left_in_cycles()), {})

    @inlineCallbacks
    def test_proxy_errors(self) -> Any:
        """The proxy's own error answers (an upstream that refuses) leave nothing for the collector."""
        proxy, _ = self.start_proxy(upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="",
                                    attempts=1)  # fmt: skip
        post = b"POST /api/proxy/jobs HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\n\r\n{}"
        answers = yield self.requests_on_one_connection(proxy, [post] * 6)
        # 502 while the upstream is thought up, 503 (failing fast) once it is marked down
        self.assertEqual({a.split(b" ", 2)[1] for a in answers} - {b"502", b"503"}, set())
        left = left_in_cycles()
        # A refused connection's tcp.Client (Twisted's) holds itself through
        # its own doConnect method, and with it the factory that asked for it.
        left.pop("_ConnectionFactory", None)
        self.assertEqual(dict(left), {})

    @inlineCallbacks
    def test_keyed_requests(self) -> Any:
        """POSTs with an Idempotency-Key, and their replays, leave nothing for the collector."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        keyed = [
            b"POST /api/proxy/jobs HTTP/1.1\r\nHost: proxy.test\r\nIdempotency-Key: key-%d\r\n"
            b"Content-Length: 2\r\n\r\n{}" % (n // 2)
            for n in range(11)
        ]
        answers = yield self.requests_on_one_connection(proxy, keyed)
        self.assertEqual([a.split(b" ", 2)[1] for a in answers], [b"200"] * 10)
        self.assertEqual(sum(b"Idempotent-Replayed: true" in a for a in answers), 5)
        self.assertEqual(dict(left_in_cycles()), {})
