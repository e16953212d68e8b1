"""
The request channel's and request's own lean versions of twisted.web's
methods (the response head, TLS, building and finishing a request, the idle
timer) do what twisted.web's do: twisted.web is the oracle, on generated
input where the input varies.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from zope.interface import implementer

from sora2proxy.http._channel import ProxyChannel

_NAMES = st.sampled_from([b"Content-Type", b"Set-Cookie", b"X-A", b"Server", b"Date", b"Content-Length"])
_VALUES = st.lists(
    st.binary(min_size=0, max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v), max_size=3
)
_FIELDS = st.dictionaries(_NAMES, _VALUES, max_size=6)
_STATUS = st.tuples(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"200", b"204", b"404", b"502"]),
    st.sampled_from([b"OK", b"", b"Bad Gateway"]),
)


def _head_written(
    channel: Any, status: tuple[bytes, bytes, bytes], fields: dict[bytes, list[bytes]]
) -> bytes:
    transport = StringTransport()
    channel.transport = transport
    headers = Headers()
    headers._rawHeaders = {name: list(values) for name, values in fields.items()}
    channel.writeHeaders(*status, headers)
    channel.write(b"body")
    return transport.value()


class ResponseHeadTests(SynchronousTestCase):
    """
    L{ProxyChannel.writeHeaders} sends the head twisted.web's
    C{HTTPChannel.writeHeaders} sends (the oracle), with the first body bytes.
    """

    @settings(max_examples=300, deadline=None)
    @given(_STATUS, _FIELDS)
    def test_same_head_as_twisted(
        self, status: tuple[bytes, bytes, bytes], fields: dict[bytes, list[bytes]]
    ) -> None:
        """Any status line and fields (none, empty, repeated) make the bytes twisted.web writes."""
        ours = _head_written(ProxyChannel(), status, fields)
        theirs = _head_written(HTTPChannel(), status, fields)
        self.assertEqual(ours, theirs)

    def test_known_head(self) -> None:
        """A head with a repeated field is written as the client reads it, one line per value."""
        fields = {b"Set-Cookie": [b"a=1", b"b=2"], b"Content-Length": [b"4"]}
        self.assertEqual(
            _head_written(ProxyChannel(), (b"HTTP/1.1", b"200", b"OK"), fields),
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 4\r\n\r\nbody",
        )


@implementer(ISSLTransport)
class _TLSTransport(StringTransport):
    """A transport that says it is TLS."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _Counted(StringTransport):
    """A transport that counts how often it is adapted to an interface."""

    adapted = 0

    def __conform__(self, interface: Any) -> None:
        if interface is ISSLTransport:
            self.adapted += 1


class SecureTests(SynchronousTestCase):
    """
    L{ProxyChannel.isSecure} answers as C{HTTPChannel.isSecure} does (the
    oracle), and adapts the transport once per connection.
    """

    def test_same_answer_as_twisted(self) -> None:
        """A TLS transport is secure and a plain one is not, for the channel and for its requests."""
        for kind, secure in ((_TLSTransport, True), (StringTransport, False)):
            for factory in (ProxyChannel, HTTPChannel):
                channel, transport = factory(), kind()
                channel.makeConnection(transport)
                self.assertIs(channel.isSecure(), secure, (factory, transport))
                self.assertIs(channel.isSecure(), secure, (factory, transport))

    def test_adapted_once(self) -> None:
        """Asked many times, the channel adapts its transport to ISSLTransport once."""
        transport = _Counted()
        channel = ProxyChannel()
        channel.makeConnection(transport)
        for _ in range(5):
            self.assertFalse(channel.isSecure())
        self.assertEqual(transport.adapted, 1)
