"""
The upstream client over real loopback sockets: connection reuse, the
target and Host as written, idle limits on a Clock, and raw upstreams that
frame their answers every way HTTP/1.1 allows.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseFailed
from twisted.web.client import PartialDownloadError, readBody

from sora2proxy.http._client import UpstreamClient
from sora2proxy.http._endpoints import UpstreamEndpoints

from .helpers import CountingSite, LoopbackMixin, RecordingUpstream, reactor, refused_port, wait


class Canned(Protocol):
    """Answers each request (headers only) with the factory's next canned bytes."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            factory: Any = self.factory
            factory.heads.append(head)
            answer, then = factory.answers.pop(0)
            assert self.transport is not None
            self.transport.write(answer)
            if then == "close":
                self.transport.loseConnection()
            elif then == "reset":  # after the bytes above have left
                reactor.callLater(0.05, self.transport.abortConnection)


class CannedFactory(Factory):
    protocol = Canned
    noisy = False

    def __init__(self, *answers: tuple[bytes, str]) -> None:
        self.answers = list(answers)
        self.heads: list[bytes] = []
        self.connections = 0


class ClientTests(TestCase):
    def client(self, clock: Any = reactor, **options: Any) -> UpstreamClient:
        client = UpstreamClient(clock, UpstreamEndpoints(reactor), **options)
        self.addCleanup(client.close_idle)
        return client

    def canned(self, *answers: tuple[bytes, str]) -> tuple[CannedFactory, UpstreamClient, bytes]:
        factory = CannedFactory(*answers)
        return factory, self.client(), b"http://127.0.0.1:%d/x" % self.listen(factory)

    def listen(self, factory: Any, interface: str = "127.0.0.1") -> int:
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def test_reuses_one_connection_and_writes_the_target_as_given(self) -> Any:
        """Three requests share one connection, each target sent byte for byte, with the upstream's Host."""
        upstream = RecordingUpstream()
        site = CountingSite(upstream)
        port = self.listen(site)
        client = self.client()
        for target in (b"/a?", b"/b;", b"/c%2Fd?x=1"):
            response = yield client.request(b"GET", b"http://127.0.0.1:%d%s" % (port, target))
            yield readBody(response)
        self.assertEqual([seen.uri for seen in upstream.seen], [b"/a?", b"/b;", b"/c%2Fd?x=1"])
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"host"), [b"127.0.0.1:%d" % port])
        self.assertEqual(site.connections, 1)
        self.assertEqual(client.idle_connections(), 1)

    @inlineCallbacks
    def test_ipv6_host_header_is_bracketed(self) -> Any:
        """An IPv6 upstream gets a bracketed Host header."""
        upstream = RecordingUpstream()
        port = self.listen(CountingSite(upstream), "::1")
        response = yield self.client().request(b"GET", b"http://[::1]:%d/x" % port)
        yield readBody(response)
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"host"), [b"[::1]:%d" % port])

    @inlineCallbacks
    def test_refused(self) -> Any:
        """A refused connection fails the request with ConnectionRefusedError."""
        with self.assertRaises(ConnectionRefusedError):
            yield self.client().request(b"GET", b"http://127.0.0.1:%d/" % refused_port())

    @inlineCallbacks
    def test_idle_connections_expire_on_the_clock(self) -> Any:
        """An idle connection is reused within the idle timeout and closed after it."""
        clock = Clock()
        site = CountingSite(RecordingUpstream())
        port = self.listen(site)
        client = self.client(clock, idle_timeout=5)
        url = b"http://127.0.0.1:%d/x" % port
        yield readBody((yield client.request(b"GET", url)))
        clock.advance(4)
        yield readBody((yield client.request(b"GET", url)))
        self.assertEqual(site.connections, 1)
        clock.advance(5.5)  # the sweep closes it
        self.assertEqual(client.idle_connections(), 0)
        yield readBody((yield client.request(b"GET", url)))
        self.assertEqual(site.connections, 2)

    @inlineCallbacks
    def test_at_most_max_idle_kept(self) -> Any:
        """No more than max_idle connections are kept idle, and close_idle closes them."""
        site = CountingSite(RecordingUpstream())
        port = self.listen(site)
        client = self.client(max_idle=1)
        url = b"http://127.0.0.1:%d/x" % port
        both = yield Deferred.fromCoroutine(_both(client, url))
        self.assertEqual(both, [200, 200])
        self.assertEqual((site.connections, client.idle_connections()), (2, 1))
        yield client.close_idle()
        self.assertEqual(client.idle_connections(), 0)

    @inlineCallbacks
    def test_connection_the_upstream_closed_is_not_reused(self) -> Any:
        """A connection the upstream closed is not used again: the next request opens another."""
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        factory, client, url = self.canned((ok, "close"), (ok, "keep"))
        self.assertEqual((yield readBody((yield client.request(b"GET", url)))), b"ok")
        yield wait(0.05)
        self.assertEqual((yield readBody((yield client.request(b"GET", url)))), b"ok")
        self.assertEqual(factory.connections, 2)

    @inlineCallbacks
    def test_chunked_then_until_close_over_sockets(self) -> Any:
        """A chunked answer leaves the connection for the next request; a body until close reads to the end."""
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        until_close = b"HTTP/1.1 200 OK\r\n\r\nthe end"
        factory, client, url = self.canned((chunked, "keep"), (until_close, "close"))
        self.assertEqual((yield readBody((yield client.request(b"GET", url)))), b"hello world")
        response = yield client.request(b"GET", url)
        # readBody reports a body that ends with the connection as a possible partial download.
        with self.assertRaises(PartialDownloadError) as raised:
            yield readBody(response)
        self.assertEqual(raised.exception.response, b"the end")
        self.assertEqual(factory.connections, 1)

    @inlineCallbacks
    def test_reset_mid_body_fails_the_body(self) -> Any:
        """A reset in the middle of a body fails the body's read."""
        _, client, url = self.canned((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "reset"))
        response = yield client.request(b"GET", url)
        with self.assertRaises(ResponseFailed):
            yield readBody(response)


async def _both(client: UpstreamClient, url: bytes) -> list[int]:
    first = client.request(b"GET", url)
    second = client.request(b"GET", url)
    codes = []
    for sent in (first, second):
        response = await sent
        await readBody(response)
        codes.append(response.code)
    return codes


class PoolConfigTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_upstream_idle_timeout(self) -> Any:
        """A pooled connection idle longer than --upstream-idle-timeout is not reused; a fresher one is."""
        connections = []
        for idle_timeout in (0.2, 4.0):
            site, upstream = self.start_upstream(RecordingUpstream())
            base, _ = self.start_proxy(upstream=upstream, health_path="", upstream_idle_timeout=idle_timeout)
            for _ in range(2):
                response, _ = yield self.fetch(b"GET", base + "/api/proxy/x")
                self.assertEqual(response.code, 200)
                yield wait(0.5)
            connections.append(site.connections)
        self.assertEqual(connections, [2, 1])
