"""
The header fields of an upstream response as the proxy reads them, checked
against h11 (the oracle): names as sent, values in order without trailing
whitespace, repeats kept, connection fields kept apart, trailers dropped;
and the HTTP version, checked against httptools' own C{get_http_version}.
"""

from __future__ import annotations

from typing import Any

import h11
from httptools import HttpParserError, HttpResponseParser
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed

from sora2proxy.http._reader import WireError
from sora2proxy.http._wire import UpstreamConnection

from .test_wire import Body

#: The fields about the connection (written out here, not taken from the code).
CONTROL = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-connection",
}

NAMES = st.sampled_from(
    [b"Server", b"server", b"X-A", b"x-a", b"X-A", b"Set-Cookie", b"ETag", b"Keep-Alive", b"TE", b"Upgrade"]
)
VALUES = st.tuples(st.sampled_from([b"v", b"a b", b"1,2", b""]), st.sampled_from([b"", b" ", b"\t", b" \t "]))
FIELD = st.tuples(NAMES, VALUES).map(lambda f: (f[0], f[1][0] + f[1][1]))
TRAILER = st.tuples(st.sampled_from([b"X-Trailer", b"Server-Timing"]), VALUES.map(b"".join))


def response(fields: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]]) -> bytes:
    """
    A chunked 200 with C{fields} in its head and C{trailers} after its body.
    """
    head = b"".join(b"%s: %s\r\n" % field for field in fields)
    tail = b"".join(b"%s: %s\r\n" % field for field in trailers)
    return (
        b"HTTP/1.1 200 OK\r\n" + head + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + tail + b"\r\n"
    )


def oracle(raw: bytes) -> tuple[dict[bytes, tuple[bytes, list[bytes]]], dict[bytes, list[bytes]]]:
    """
    @return: h11's reading of C{raw}: the end-to-end fields by lowercase name
        (the first name as sent, the values in order), and the values of the
        fields about the connection.
    """
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/x", headers=[("Host", "u")]))
    client.receive_data(raw)
    event: Any = client.next_event()
    assert isinstance(event, h11.Response), event
    fields: dict[bytes, tuple[bytes, list[bytes]]] = {}
    control: dict[bytes, list[bytes]] = {}
    for name, lower, value in event.headers._full_items:
        if lower in CONTROL:
            control.setdefault(lower, []).append(value)
        else:
            fields.setdefault(lower, (name, []))[1].append(value)
    return fields, control


class ReaderFieldsTests(SynchronousTestCase):
    def read(self, connection: UpstreamConnection, raw: bytes, piece: int) -> Any:
        result = connection.send(b"GET /x HTTP/1.1\r\nHost: u\r\n\r\n", None, b"GET")
        for i in range(0, len(raw), piece):
            connection.dataReceived(raw[i : i + piece])
        answer = self.successResultOf(result)
        body = Body()
        answer.deliverBody(body)
        self.assertEqual(body.data, b"ok")
        return answer

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(st.lists(FIELD, max_size=12), st.lists(TRAILER, max_size=3)), min_size=1, max_size=3
        ),
        st.integers(1, 40),
    )
    def test_fields_agree_with_h11(
        self, answers: list[tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]], piece: int
    ) -> None:
        """Each answer on a kept-alive connection has the header fields h11 reads, and none of its trailers."""
        connection = UpstreamConnection(lambda _: None, lambda _: None)
        connection.makeConnection(StringTransport())
        for fields, trailers in answers:
            raw = response(fields, trailers)
            answer = self.read(connection, raw, piece)
            expected, control = oracle(raw)
            self.assertEqual(answer.fields, expected)
            self.assertEqual(
                {name: values for name, (_, values) in answer.connection_fields.items()}, control
            )

    def test_as_many_fields_as_allowed(self) -> None:
        """An answer with 100 header fields (names, repeats, connection fields) is read; one more of any kind is refused."""
        fields = [(b"X-N%d" % n, b"1") for n in range(30)] + [(b"X-R", b"%d" % n) for n in range(30)]
        fields += [(b"Keep-Alive", b"timeout=5")] * 20 + [(b"Connection", b"keep-alive")] * 19
        answer = self.read(self.connection(), response(fields, []), 7)  # and Transfer-Encoding: 100
        self.assertEqual(answer.headers.getRawHeaders(b"x-r"), [b"%d" % n for n in range(30)])
        for more in [(b"X-New", b"1"), (b"X-R", b"30"), (b"Keep-Alive", b"timeout=5")]:
            connection = self.connection()
            result = connection.send(b"GET /x HTTP/1.1\r\nHost: u\r\n\r\n", None, b"GET")
            connection.dataReceived(response([*fields, more], []))
            failure = self.failureResultOf(result, ResponseFailed)
            self.assertTrue(failure.value.reasons[0].check(WireError))

    def connection(self) -> UpstreamConnection:
        connection = UpstreamConnection(lambda _: None, lambda _: None)
        connection.makeConnection(StringTransport())
        return connection


def llhttp_version(raw: bytes) -> str | None:
    """
    @return: the version httptools' own C{get_http_version} gives for the
        head C{raw}, or L{None} when llhttp refuses the head.
    """
    versions: list[str] = []

    class Head:
        def on_headers_complete(self) -> None:
            versions.append(parser.get_http_version())

    parser = HttpResponseParser(Head())
    try:
        parser.feed_data(raw)
    except HttpParserError:
        return None
    return versions[0] if versions else None


class ReaderVersionTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text("0129.x/ ", min_size=1, max_size=4).map(str.encode), st.integers(1, 12))
    @example(b"1.1", 1)
    @example(b"1.0", 6)
    @example(b"1.1", 40)
    @example(b"1.2", 7)
    @example(b"0.9", 2)
    @example(b"11.1", 3)
    def test_version_as_llhttp_reads_it(self, version: bytes, piece: int) -> None:
        """An answer is read when llhttp reads its version as 1.0 or 1.1 (with that version), and refused otherwise."""
        raw = b"HTTP/" + version + b" 200 OK\r\nContent-Length: 0\r\n\r\n"
        connection = UpstreamConnection(lambda _: None, lambda _: None)
        connection.makeConnection(StringTransport())
        result = connection.send(b"GET /x HTTP/1.1\r\nHost: u\r\n\r\n", None, b"GET")
        for i in range(0, len(raw), piece):
            connection.dataReceived(raw[i : i + piece])
        expected = llhttp_version(raw)
        if expected in ("1.0", "1.1"):
            self.assertEqual(self.successResultOf(result).version, (b"HTTP", 1, int(expected[2])))
        else:
            self.failureResultOf(result, ResponseFailed)
