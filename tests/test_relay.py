"""
Response bodies over real sockets: streamed as they arrive, cut short when the
upstream dies, and the upstream released when the client goes away.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from .helpers import LoopbackMixin, reactor, wait


class StreamingUpstream(Resource):
    """Sends a first event, then waits for C{release} before the rest or an abort."""

    isLeaf = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length
        self.requests: list[Request] = []
        self.lost: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        request.setHeader(b"content-type", b"text/event-stream")
        if self.length is not None:
            request.setHeader(b"content-length", b"%d" % self.length)
        request.write(b"data: first\n\n")
        request.notifyFinish().addErrback(lambda _: self.lost.append(request))
        return NOT_DONE_YET


class Flood(Resource):
    """Writes C{size} bytes as fast as the connection takes them (a push producer)."""

    isLeaf = True
    CHUNK = b"v" * 65536

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.sent = 0
        self.finished = False

    def render(self, request: Request) -> int:
        flood = self
        request.setHeader(b"content-length", b"%d" % self.size)

        @implementer(IPushProducer)
        class Producer:
            paused = False

            def resumeProducing(self) -> None:
                self.paused = False
                while not self.paused and flood.sent < flood.size:
                    request.write(flood.CHUNK)
                    flood.sent += len(flood.CHUNK)
                if flood.sent >= flood.size and not flood.finished:
                    flood.finished = True
                    request.unregisterProducer()
                    request.finish()

            def pauseProducing(self) -> None:
                self.paused = True

            def stopProducing(self) -> None:
                self.paused = True

        producer = Producer()
        request.registerProducer(producer, True)
        reactor.callLater(0, producer.resumeProducing)
        return NOT_DONE_YET


class Collect(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.first: Deferred[bytes] = Deferred()
        self.done: Deferred[list[Failure]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if not self.first.called:
            self.first.callback(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.done.callback([reason])


class RelayTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def streamed(self, upstream: StreamingUpstream, path: str) -> Any:
        """
        @return: the response to C{GET path} through a proxy to C{upstream}, and
            a L{Collect} receiving its body.
        """
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        response = yield self.client().request(b"GET", (proxy + path).encode())
        collect = Collect()
        response.deliverBody(collect)
        return response, collect

    @inlineCallbacks
    def test_first_event_before_upstream_finishes(self) -> Any:
        """A streamed response's first event reaches the client while the upstream is still sending."""
        upstream = StreamingUpstream()
        response, collect = yield self.streamed(upstream, "/api/proxy/events")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        first = yield collect.first
        self.assertEqual(first, b"data: first\n\n")
        self.assertFalse(upstream.requests[0].finished)
        upstream.requests[0].write(b"data: second\n\n")
        upstream.requests[0].finish()
        [reason] = yield collect.done
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(b"".join(collect.chunks), b"data: first\n\ndata: second\n\n")

    @inlineCallbacks
    def test_upstream_dies_mid_body(self) -> Any:
        """An upstream that dies mid-body gives the client a cut transfer, never a complete-looking one."""
        for length in (1000, None):
            upstream = StreamingUpstream(length)
            _, collect = yield self.streamed(upstream, "/api/proxy/video")
            yield collect.first
            upstream.requests[0].transport.abortConnection()
            [reason] = yield collect.done
            self.assertFalse(reason.check(ResponseDone), (length, reason))
            self.assertFalse(reason.check(PotentialDataLoss) and length is not None, reason)

    @inlineCallbacks
    def test_client_gone_mid_body(self) -> Any:
        """A client that leaves mid-body makes the proxy close the upstream connection."""
        upstream = StreamingUpstream()
        _, collect = yield self.streamed(upstream, "/api/proxy/events")
        yield collect.first
        assert collect.transport is not None
        collect.transport.stopProducing()  # the client closes its connection
        for _ in range(100):
            if upstream.lost:
                break
            yield wait(0.01)
        self.assertEqual(len(upstream.lost), 1)

    @inlineCallbacks
    def test_slow_client_pauses_the_upstream(self) -> Any:
        """A client that stops reading stops the upstream too (backpressure): the proxy does not buffer the body."""
        size = 64 * 1024 * 1024
        upstream = Flood(size)
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        port = int(proxy.rsplit(":", 1)[1])
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"GET /api/proxy/big HTTP/1.1\r\nHost: p\r\n\r\n")
        previous = -1
        for _ in range(100):  # until the upstream stops getting anywhere (at most 10 s)
            yield wait(0.1)
            if upstream.sent == previous and upstream.sent > 0:
                break
            previous = upstream.sent
        self.assertFalse(upstream.finished)
        self.assertLess(upstream.sent, size // 2)  # socket buffers' worth, not the body
        client.setblocking(False)
        received = 0
        for _ in range(3000):  # then reading it all gets the whole body
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                yield wait(0.002)
                continue
            if not chunk:
                break
            received += len(chunk)
            if received >= size:
                break
        self.assertTrue(upstream.finished)
        self.assertGreaterEqual(received, size)


__all__ = ["reactor"]
