"""
Many responses on one upstream connection: whatever the framings in
sequence (Content-Length, chunked with trailers, 204, 304, 1xx first, a
HEAD's answer), each is read whole and alone, while the connection's
llhttp parser is reused from one response to the next where that is safe.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.http._wire import UpstreamConnection

from .test_wire import Body

BODY = st.binary(max_size=40)


def content_length(body: bytes) -> tuple[bytes, bytes, bytes]:
    return b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), body


def chunked(body: bytes) -> tuple[bytes, bytes, bytes]:
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    return b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\nT: 1\r\n\r\n" % chunks, body


def interim_first(body: bytes) -> tuple[bytes, bytes, bytes]:
    _, raw, _ = content_length(body)
    return b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" + raw, body


def head_answer(body: bytes) -> tuple[bytes, bytes, bytes]:
    return b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 5), b""


def bodiless(body: bytes) -> tuple[bytes, bytes, bytes]:
    return b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", b""


def not_modified(body: bytes) -> tuple[bytes, bytes, bytes]:
    return b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b""


EXCHANGE = st.builds(
    lambda make, body: make(body),
    st.sampled_from([content_length, chunked, interim_first, head_answer, bodiless, not_modified]),
    BODY,
)


class KeepAliveTests(SynchronousTestCase):
    """
    One connection, many answers.
    """

    def read(
        self, connection: UpstreamConnection, method: bytes, raw: bytes, piece: int
    ) -> tuple[int, bytes]:
        result = connection.send(method + b" /x HTTP/1.1\r\nHost: u\r\n\r\n", None, method)
        for i in range(0, len(raw), piece):
            connection.dataReceived(raw[i : i + piece])
        response: Any = self.successResultOf(result)
        body = Body()
        response.deliverBody(body)
        return response.code, body.data

    @settings(max_examples=150, deadline=None)
    @given(st.lists(EXCHANGE, min_size=1, max_size=8), st.integers(1, 64))
    def test_each_answer_read_alone(self, exchanges: list[tuple[bytes, bytes, bytes]], piece: int) -> None:
        """
        Every answer in the sequence gives its own body, and the connection
        goes back to the pool after each.
        """
        idle: list[UpstreamConnection] = []
        connection = UpstreamConnection(idle.append, lambda _: None)
        connection.makeConnection(StringTransport())
        for count, (method, raw, body) in enumerate(exchanges, 1):
            _code, data = self.read(connection, method, raw, piece)
            self.assertEqual(data, body)
            self.assertEqual(len(idle), count)

    def test_parser_kept_between_gets(self) -> None:
        """
        Two GETs share one reader (and its llhttp parser); after a HEAD's
        answer, the next GET gets a fresh one.
        """
        connection = UpstreamConnection(lambda _: None, lambda _: None)
        connection.makeConnection(StringTransport())
        readers = []
        for method, raw, _ in [content_length(b"a"), chunked(b"bb"), head_answer(b"c"), content_length(b"d")]:
            self.read(connection, method, raw, 100)
            readers.append(connection._last_reader)
        self.assertIs(readers[0], readers[1])
        self.assertIsNot(readers[1], readers[2])
        self.assertIsNot(readers[2], readers[3])

    def test_large_body_read_directly(self) -> None:
        """
        A large Content-Length body read in large pieces arrives whole (and
        the next answer on the connection too); bytes past its end in the
        same piece close the connection.
        """
        idle: list[UpstreamConnection] = []
        connection = UpstreamConnection(idle.append, lambda _: None)
        transport = StringTransport()
        connection.makeConnection(transport)
        big = bytes(range(256)) * 400  # 102,400 bytes
        _, raw, _ = content_length(big)
        self.assertEqual(self.read(connection, b"GET", raw, 17 * 1024), (200, big))
        self.assertEqual(self.read(connection, b"GET", chunked(b"next")[1], 5), (200, b"next"))
        self.assertEqual(len(idle), 2)
        self.assertEqual(
            self.read(connection, b"GET", raw + b"HTTP/1.1 200 OK\r\n", len(raw) + 5), (200, big)
        )
        self.assertEqual(len(idle), 2)
        self.assertTrue(transport.disconnecting)
