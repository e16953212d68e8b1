"""
HTTP/2 without sockets: which heads are refused and why (L{head_problem}),
and the protocol a connection speaks after ALPN (L{NegotiatedChannel}).
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sora2proxy import ProxyConfig
from sora2proxy.http._h2 import ProxyH2Connection
from sora2proxy.http._h2_heads import head_problem
from sora2proxy.http._site import ProxySite

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api.example"), (b":path", b"/x")]


class HeadProblemTests(SynchronousTestCase):
    """What an HTTP/2 request head may carry."""

    def problem(self, *extra: tuple[bytes, bytes], base: list[tuple[bytes, bytes]] = BASE) -> Any:
        found = head_problem([*base, *extra], 100)
        return None if found is None else (found.kind.status, found.message)

    def test_plain_request_passes(self) -> None:
        """A GET with the four pseudo-fields, TE: trailers and ordinary fields is fine."""
        self.assertIsNone(
            self.problem((b"te", b"trailers"), (b"accept", b"*/*"), (b"content-length", b"100"))
        )

    def test_connection_specific_fields(self) -> None:
        """Each connection-specific field, and TE other than trailers, is a 400 naming it (RFC 9113 8.2.2)."""
        for name, shown in (
            (b"connection", "Connection"),
            (b"keep-alive", "Keep-Alive"),
            (b"proxy-connection", "Proxy-Connection"),
            (b"transfer-encoding", "Transfer-Encoding"),
        ):
            status, message = self.problem((name, b"x"))
            self.assertEqual(status, 400)
            self.assertIn(f"connection-specific field {shown} (RFC 9113 section 8.2.2)", message)
        self.assertEqual(self.problem((b"te", b"gzip"))[0], 400)
        self.assertIn("WebSocket", self.problem((b"upgrade", b"websocket"))[1])

    def test_hyper_h2_rules_still_apply(self) -> None:
        """A missing :path, an upper-case name or a pseudo-field after a field is a 400."""
        self.assertEqual(self.problem(base=BASE[:3])[0], 400)
        self.assertEqual(self.problem((b"X-Upper", b"1"))[0], 400)
        self.assertEqual(self.problem((b"accept", b"*/*"), (b":foo", b"1"))[0], 400)

    def test_limits_authority_and_length(self) -> None:
        """Over 100 fields is a 431; a bad or disagreeing :authority a 400; a Content-Length over the limit a 413."""
        many = [(b"x-n%d" % i, b"v") for i in range(101)]
        self.assertEqual(self.problem(*many)[0], 431)
        self.assertIsNone(self.problem(*many[:100]))
        self.assertEqual(self.problem((b"x-big", b"v" * 33000))[0], 431)
        bad = [*BASE[:2], (b":authority", b"a.example/path"), BASE[3]]
        self.assertEqual(self.problem(base=bad)[0], 400)
        self.assertEqual(self.problem((b"host", b"other.example"))[0], 400)
        self.assertIsNone(self.problem((b"host", b"api.example")))
        self.assertEqual(self.problem((b"content-length", b"101"))[0], 413)


class Hello(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"hello"


class Negotiated(StringTransport):
    """A transport whose TLS handshake chose C{protocol}."""

    def __init__(self, protocol: bytes | None) -> None:
        super().__init__()
        self.negotiatedProtocol = protocol


class NegotiatedChannelTests(SynchronousTestCase):
    """The protocol each connection speaks is the one ALPN chose."""

    def connect(self, protocol: bytes | None, **options: Any) -> tuple[Any, Negotiated]:
        site = ProxySite(Hello(), ProxyConfig(**options), reactor=MemoryReactorClock())
        channel = site.buildProtocol(None)
        transport = Negotiated(protocol)
        channel.makeConnection(transport)
        return channel, transport

    def test_h2_gets_an_h2_connection(self) -> None:
        """ALPN h2: the first bytes go to an HTTP/2 connection, which answers with its SETTINGS."""
        channel, transport = self.connect(b"h2", h2_max_streams=5)
        channel.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertIsInstance(channel._channel, ProxyH2Connection)
        self.assertEqual(channel._channel.conn.local_settings.max_concurrent_streams, 5)
        self.assertEqual(transport.value()[3:4], b"\x04")  # a SETTINGS frame

    def test_http11_and_no_alpn_stay_on_the_channel(self) -> None:
        """ALPN http/1.1, or none (plain TCP): the site's HTTP/1.1 channel answers."""
        for protocol in (b"http/1.1", None):
            channel, transport = self.connect(protocol)
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
            self.assertNotIsInstance(channel._channel, ProxyH2Connection)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 "), transport.value())


class Waits(Resource):
    """Answers only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET


class IdleTimeoutTests(SynchronousTestCase):
    """--idle-timeout over HTTP/2, on a Clock."""

    def test_no_idle_timeout_while_a_request_is_handled(self) -> None:
        """A request still waiting for its answer after --idle-timeout keeps its connection; an idle one closes."""
        clock = MemoryReactorClock()
        resource = Waits()
        site = ProxySite(resource, ProxyConfig(idle_timeout=5), reactor=clock)
        channel = site.buildProtocol(None)
        transport = Negotiated(b"h2")
        channel.makeConnection(transport)
        client = H2State(H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, BASE, end_stream=True)
        channel.dataReceived(client.data_to_send())
        self.assertEqual(len(resource.waiting), 1)
        clock.advance(60)
        self.assertFalse(transport.disconnecting)
        resource.waiting[0].write(b"late")
        resource.waiting[0].finish()
        clock.advance(0)  # the answer goes out
        self.assertFalse(transport.disconnecting)
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
