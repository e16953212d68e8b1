"""
Request-head limits in memory, on a Clock: 414, 431, 408 (slowloris), the
heads refused at once (bare LF, Host, chunk sizes), header names with
underscores, and the --workers endpoint rules.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from sora2proxy import ConfigError, ProxyConfig
from sora2proxy.http._site import ProxySite
from sora2proxy.ops._workers import reuseport_tcp, sora2proxy_args


class Hello(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        return b"hello"


def connected(**options: object) -> tuple[object, StringTransport, MemoryReactorClock]:
    clock = MemoryReactorClock()
    site = ProxySite(Hello(), ProxyConfig(**options), reactor=clock)  # type: ignore[arg-type]
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


class ChannelTests(SynchronousTestCase):
    def test_request_line_too_long(self) -> None:
        """A request line over 8 KiB gets 414 JSON and the connection closes."""
        channel, transport, _ = connected()
        channel.dataReceived(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")  # type: ignore[attr-defined]
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "))
        self.assertIn(b"URI_TOO_LONG", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_too_many_headers(self) -> None:
        """More than 100 headers get 431."""
        channel, transport, _ = connected()
        head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
        channel.dataReceived(head)  # type: ignore[attr-defined]
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        channel.dataReceived(b"more\r\n")  # type: ignore[attr-defined]  # ignored once refused

    def test_line_longer_than_twisted_allows(self) -> None:
        """A header line longer than Twisted's line limit gets 431 too."""
        channel, transport, _ = connected()
        channel.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 20000)  # type: ignore[attr-defined]
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "), transport.value()[:40])

    def test_slow_headers(self) -> None:
        """Headers not complete within --header-timeout get 408; complete ones in time are served."""
        channel, transport, clock = connected(header_timeout=2)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n")  # type: ignore[attr-defined]
        clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        channel, transport, clock = connected(header_timeout=2)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")  # type: ignore[attr-defined]
        clock.advance(5)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertNotIn(b"408", transport.value())
        channel.connectionLost(None)  # type: ignore[attr-defined]

    def test_no_header_timeout(self) -> None:
        """--header-timeout 0 sets no timer: an incomplete head is never answered 408."""
        channel, transport, clock = connected(header_timeout=0, idle_timeout=0)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(86_400)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)


class Echo(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        names = sorted(name.lower() for name, _ in request.requestHeaders.getAllRawHeaders())
        return b",".join(names) + b"|" + request.content.read()


def sent(data: bytes, **options: object) -> tuple[bytes, StringTransport]:
    clock = MemoryReactorClock()
    channel = ProxySite(Echo(), ProxyConfig(**options), reactor=clock).buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value(), transport


class HeadRefusalTests(SynchronousTestCase):
    """Without the clock ever advancing: a malformed head is answered at once."""

    def assertRefused(self, data: bytes) -> None:
        answer, transport = sent(data)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (data, answer))
        self.assertTrue(transport.disconnecting)

    def test_bare_lf(self) -> None:
        """A head whose lines end in a bare LF gets 400 JSON at once."""
        answer, _ = sent(b"GET / HTTP/1.1\nHost: p\n\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"BAD_REQUEST", answer)
        self.assertIn(b"bare LF", answer)

    def test_bare_lf_split_across_reads(self) -> None:
        """A CRLF split between two reads is no bare LF; a bare LF after a complete line is one."""
        clock = MemoryReactorClock()
        channel = ProxySite(Echo(), ProxyConfig(), reactor=clock).buildProtocol(None)  # type: ignore[arg-type]
        transport = StringTransport()
        channel.makeConnection(transport)
        for piece in (b"GET / HTTP/1.1\r", b"\nHost: p\r", b"\n\r", b"\n"):
            channel.dataReceived(piece)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: p\nX-A: 1\n\n")

    def test_chunk_size_over_64_bits(self) -> None:
        """A chunk size of 17 significant hex digits gets 400 at once; leading zeros do not count."""
        head = b"POST / HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.assertRefused(head + b"10000000000000000\r\nabc")
        self.assertRefused(head + b"fffffffffffffffff")
        answer, _ = sent(head + b"00000000000000000003\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertTrue(answer.endswith(b"|abc"), answer)
        answer, transport = sent(head + b"ffffffffffffffff\r\nabc")
        self.assertEqual(answer, b"")  # 16 digits fit: the body is awaited (and bounded by --max-body)
        self.assertFalse(transport.disconnecting)

    def test_host_rules(self) -> None:
        """RFC 9112 section 3.2: Host is required on HTTP/1.1, once, and is a host and optional port."""
        for head in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: evil.example/x?\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [nope]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h:123456\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\n\r\n",
        ):
            self.assertRefused(head)
        for head in (
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ):
            answer, _ = sent(head)
            self.assertTrue(answer.split(b" ")[1] == b"200", (head, answer))

    def test_underscore_names(self) -> None:
        """Header names holding '_' are dropped before the request is handled, unless allowed."""
        head = b"GET / HTTP/1.1\r\nHost: p\r\nX_Forwarded_Host: evil\r\nX-A_b: 1\r\nX-Ok: 1\r\n\r\n"
        answer, _ = sent(head)
        self.assertTrue(answer.endswith(b"\r\n\r\nhost,x-ok|"), answer)
        answer, _ = sent(head, allow_underscore_headers=True)
        self.assertTrue(answer.endswith(b"\r\n\r\nhost,x-a_b,x-ok,x_forwarded_host|"), answer)
        answer, _ = sent(b"GET / HTTP/1.1\r\nHost: p\r\nX_no_colon\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)  # a malformed line is not just dropped


class WorkerEndpointTests(SynchronousTestCase):
    def test_reuseport_tcp(self) -> None:
        """--workers takes TCP endpoints with a fixed port, and nothing else."""
        self.assertEqual(reuseport_tcp("tcp:3200"), ("0.0.0.0", 3200))
        self.assertEqual(reuseport_tcp("tcp:port=3200:interface=127.0.0.1"), ("127.0.0.1", 3200))
        self.assertEqual(reuseport_tcp("tcp6:3200:interface=\\:\\:1"), ("::1", 3200))
        for bad in ("unix:/tmp/x", "tcp:0", "ssl:443"):
            with self.assertRaises(ConfigError):
                reuseport_tcp(bad)

    def test_args(self) -> None:
        """The worker command line starts after twistd's sora2proxy subcommand."""
        self.assertEqual(
            sora2proxy_args(["twistd", "-n", "sora2proxy", "--timeout", "3"]), ["--timeout", "3"]
        )
        self.assertEqual(sora2proxy_args(["python", "-c", "x"]), [])


class Empty(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        request.setResponseCode(204)  # type: ignore[attr-defined]
        return b""


class ResponseWritingTests(SynchronousTestCase):
    def test_head_and_body_written_together(self) -> None:
        """The response head is held back and written with the first body bytes, in one write."""
        channel, transport, _ = connected()
        writes: list[bytes] = []
        original = transport.write
        transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[method-assign]
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")  # type: ignore[attr-defined]
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(writes[0].endswith(b"\r\n\r\nhello"))

    def test_bodiless_answers_still_get_their_head(self) -> None:
        """A 204 and a HEAD answer (no body bytes) get their head when the request ends."""
        clock = MemoryReactorClock()
        for resource, method in ((Empty(), b"GET"), (Hello(), b"HEAD")):
            channel = ProxySite(resource, ProxyConfig(), reactor=clock).buildProtocol(None)  # type: ignore[arg-type]
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.dataReceived(method + b" / HTTP/1.1\r\nHost: p\r\n\r\n")
            first = transport.value()
            self.assertTrue(first.startswith(b"HTTP/1.1 204" if method == b"GET" else b"HTTP/1.1 200"), first)
            self.assertTrue(first.endswith(b"\r\n\r\n"))
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
            self.assertEqual(transport.value().count(b"HTTP/1.1 "), 2)
