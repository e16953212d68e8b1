"""
The request channel that reads heads with llhttp: what llhttp lets through
and the proxy refuses, what it refuses and the words a client gets, the
framing of bodies checked against h11 on generated pipelined requests fed in
random pieces, the header timer (never armed for a head that arrives whole),
the parser kept across keep-alive requests, and pipelined requests with
bodies over real sockets.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sora2proxy import ProxyConfig
from sora2proxy.http._site import ProxySite

from .helpers import LoopbackMixin, RecordingUpstream
from .test_refused_heads import one_response
from .test_request_head import exchange


class Recorder(Resource):
    """Answers every request at once with its body; remembers what it saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []

    def render(self, request: Any) -> bytes:
        fields = sorted(
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        )
        body = request.content.read()
        self.seen.append((request.method, request.uri, fields, body))
        return body


def channel_for(resource: Resource, **options: Any) -> tuple[Any, StringTransport, MemoryReactorClock]:
    clock = MemoryReactorClock()
    channel = ProxySite(resource, ProxyConfig(**options), reactor=clock).buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def refusal(data: bytes) -> tuple[int, str]:
    """The status and message the channel answers C{data} with, at once."""
    channel, transport, _ = channel_for(Recorder())
    channel.dataReceived(data)
    answer = transport.value()
    assert transport.disconnecting, answer
    status, _, body = one_response(answer)
    return int(status.split(b" ")[1]), json.loads(body)["message"]


#: What llhttp lets through and the proxy refuses, and the words it says.
LET_THROUGH = [
    (b"GET /a HTTP/2.0\r\nHost: p\r\n\r\n", "must be HTTP/1.1 or HTTP/1.0"),
    (b"GET /a\r\n\r\n", "method, a target and a version"),
    (b"GET  /a HTTP/1.1\r\nHost: p\r\n\r\n", "separated by single spaces"),
    (b"GET /a  HTTP/1.1\r\nHost: p\r\n\r\n", "separated by single spaces"),
    (b"POST /a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "only transfer coding"),
]

#: What llhttp refuses, and the words the client gets for it.
LLHTTP_REFUSES = [
    (b"GET /a HTTP/1.1\r\nHost: p\r\nX-A: 1\r\n folded\r\n\r\n", "obsolete line folding"),
    (b"FOO /a HTTP/1.1\r\nHost: p\r\n\r\n", "not an HTTP method"),
    (b"get /a HTTP/1.1\r\nHost: p\r\n\r\n", "not an HTTP method"),
    (b"DESCRIBE /a HTTP/1.1\r\nHost: p\r\n\r\n", "not an HTTP method"),
    (b"GET /a HTTP/1.1\r\nHost: p\r\nX-A: a\x01b\r\n\r\n", "X-A header's value holds a control byte"),
    (b"POST /a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: identity\r\n\r\n", "only transfer coding"),
    (
        b"POST /a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "not two",
    ),
    (b"POST /a HTTP/1.1\r\nHost: p\r\nContent-Length: \r\n\r\n", "decimal digits only"),
    (
        b"POST /a HTTP/1.1\r\nHost: p\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "does not fit in 64 bits",
    ),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "TLS handshake sent to a plain HTTP port"),
    (b"GET /a HTTP/1.1\rHost: p\r\n\r\n", "request line must be"),
]


class RefusedAtOnce(SynchronousTestCase):
    """Without the clock ever moving: each head gets one JSON 400 saying what is wrong."""

    def test_what_llhttp_lets_through(self) -> None:
        """A version llhttp takes but HTTP/1.1 does not, double spaces, gzip before chunked: 400 at once."""
        for data, words in LET_THROUGH:
            status, message = refusal(data)
            self.assertEqual(status, 400, data)
            self.assertIn(words, message, data)

    def test_what_llhttp_refuses_in_words(self) -> None:
        """Folding, unknown or lower-case methods, control bytes, odd framing: 400 naming the fault."""
        for data, words in LLHTTP_REFUSES:
            status, message = refusal(data)
            self.assertEqual(status, 400, data)
            self.assertIn(words, message, data)

    def test_refusal_dated(self) -> None:
        """A refused head's answer carries the site's Date, as every other answer does."""
        channel, transport, clock = channel_for(Recorder())
        clock.advance(784111777)  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example)
        channel.dataReceived(b"GET /a HTTP/2.0\r\nHost: p\r\n\r\n")
        self.assertIn(b"\r\ndate: sun, 06 nov 1994 08:49:37 gmt\r\n", transport.value().lower())

    def test_refused_before_the_head_ends(self) -> None:
        """An HTTP/0.9 line, a TLS handshake, bare-LF chunk or trailer lines: a 400 at once, no wait."""
        for data, words in [
            (b"GET /api/proxy/videos\r\n", "method, a target and a version"),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS handshake"),
            (b"POST /a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\n0\n\n", "bare LF"),
            (b"POST /a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\n", "bare LF"),
        ]:
            status, message = refusal(data)
            self.assertEqual(status, 400, data)
            self.assertIn(words, message, data)

    def test_header_count_limit(self) -> None:
        """100 headers are served; 101 in a complete head get 431."""
        head = b"GET / HTTP/1.1\r\nHost: p\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n"
        channel, transport, _ = channel_for(Recorder())
        channel.dataReceived(head)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:60])
        status, _ = refusal(head[:-2] + b"X-100: v\r\n\r\n")
        self.assertEqual(status, 431)

    def test_no_timer_left_after_a_refusal(self) -> None:
        """A refused request (a body over --max-body, a bad head) leaves no timer to fire on its closing connection."""
        for head in (b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 11\r\n\r\n", b"GET  / HTTP/1.1\r\n\r\n"):
            channel, transport, clock = channel_for(Recorder(), max_body=10, idle_timeout=5)
            channel.dataReceived(head)
            self.assertTrue(transport.disconnecting)
            self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], [], head)
            clock.advance(60)

    def test_nothing_read_after_a_refusal(self) -> None:
        """A valid request after a refused one on the same connection is never handled."""
        recorder = Recorder()
        channel, transport, _ = channel_for(recorder)
        channel.dataReceived(b"GET  /a HTTP/1.1\r\nHost: p\r\n\r\nGET /b HTTP/1.1\r\nHost: p\r\n\r\n")
        channel.dataReceived(b"GET /c HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(recorder.seen, [])
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)


class ChannelBehaviour(SynchronousTestCase):
    def test_whole_head_arms_no_timer(self) -> None:
        """A head that arrives whole never arms the header timer; a partial one does, until it completes."""
        channel, transport, clock = channel_for(Recorder(), idle_timeout=0)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(clock.getDelayedCalls(), [])
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        channel.dataReceived(b"Host: p\r\n\r\n")
        self.assertEqual([call for call in clock.getDelayedCalls() if call.active()], [])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)

    def test_parser_kept_across_requests(self) -> None:
        """Keep-alive GETs share one llhttp parser; a request with a body leaves it for a new one."""
        channel, _, _ = channel_for(Recorder())
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
        parser = channel._reader._parser
        channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertIs(channel._reader._parser, parser)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\n\r\nx")
        channel.dataReceived(b"GET /c HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertIsNot(channel._reader._parser, parser)

    def test_headers_as_twisted_keeps_them(self) -> None:
        """Headers are found in any case, repeated ones in order, trailing blanks gone."""
        seen = []

        class Look(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                headers = request.requestHeaders
                seen.append(
                    (headers.getRawHeaders(b"x-a"), headers.getRawHeaders("X-B"), headers.hasHeader(b"HOST"))
                )
                return b""

        channel, _, _ = channel_for(Look())
        channel.dataReceived(b"GET / HTTP/1.1\r\nhost: p\r\nX-A: 1 \t\r\nx-a: 2\r\nX-b:\t three\r\n\r\n")
        self.assertEqual(seen, [([b"1", b"2"], ["three"], True)])

    def test_expect_continue(self) -> None:
        """Expect: 100-continue on HTTP/1.1 gets 100 Continue before the body; a body over --max-body gets none."""
        channel, transport, _ = channel_for(Recorder())
        channel.dataReceived(
            b"PUT / HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"abc")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nabc"), transport.value())
        channel, transport, _ = channel_for(Recorder(), max_body=2)
        channel.dataReceived(
            b"PUT / HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertNotIn(b"100 Continue", transport.value())

    def test_one_blank_line_before_a_request(self) -> None:
        """One empty line before a request line is skipped (as Twisted did); two get 400."""
        channel, transport, _ = channel_for(Recorder())
        channel.dataReceived(b"\r\nGET / HTTP/1.1\r\nHost: p\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)
        status, message = refusal(b"\r\n\r\nGET / HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertIn("starts with an empty line", message)
        channel, transport, _ = channel_for(Recorder())
        for piece in (b"\r\n", b"\r\n", b"GET / HTTP/1.1\r\nHost: p\r\n\r\n"):
            channel.dataReceived(piece)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertIn(b"starts with an empty line", transport.value())

    def test_next_request_waits_for_the_answer(self) -> None:
        """A pipelined request is not handled until the one before it is answered; the client is paused meanwhile."""
        held: list[Any] = []

        class Slow(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                held.append(request)
                return NOT_DONE_YET

        channel, transport, _ = channel_for(Slow())
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: p\r\n\r\nGET /2 HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual([request.uri for request in held], [b"/1"])
        channel.dataReceived(b"GET /3 HTTP/1.1\r\nHost: p\r\n\r\n")
        self.assertEqual(len(held), 1)
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(
            b"GET /4 HTTP/1.1\r\nHost: p\r\n" + b"X-Pad: %s\r\n" % (b"p" * 3500) * 5 + b"\r\n"
        )
        self.assertEqual(transport.producerState, "paused")  # the client is not read while it waits
        held[0].write(b"one")
        held[0].finish()
        self.assertEqual([request.uri for request in held], [b"/1", b"/2"])
        held[1].finish()
        self.assertEqual([request.uri for request in held], [b"/1", b"/2", b"/3"])
        held[2].finish()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([request.uri for request in held], [b"/1", b"/2", b"/3", b"/4"])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"), transport.value())

    def test_idle_timeout_between_requests_only(self) -> None:
        """A request handled longer than --idle-timeout keeps its connection; idle time counts from the answer."""
        held: list[Any] = []

        class Slow(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                held.append(request)
                return NOT_DONE_YET

        channel, transport, clock = channel_for(Slow(), idle_timeout=5)
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: p\r\n\r\n")
        clock.advance(30)
        self.assertFalse(transport.disconnecting)
        held[0].finish()
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_one_idle_timer_per_connection(self) -> None:
        """Keep-alive requests answered at once reuse the connection's idle timer: no DelayedCall per request."""
        channel, transport, clock = channel_for(Recorder(), idle_timeout=5)
        [timer] = clock.getDelayedCalls()
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
            [now] = clock.getDelayedCalls()
            self.assertIs(now, timer)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)

    def test_pipelined_bodies_answered_in_order(self) -> None:
        """Pipelined POSTs with bodies in one read each get their own answer, in order."""
        recorder = Recorder()
        channel, transport, _ = channel_for(recorder)
        post = b"POST /%d HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n%02d"
        chunked = b"POST /c HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
        channel.dataReceived(b"".join(post % (i, i) for i in range(3)) + chunked + post % (9, 9))
        self.assertEqual([body for _, _, _, body in recorder.seen], [b"00", b"01", b"02", b"xy", b"09"])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 5)


_NAMES = st.sampled_from([b"X-A", b"x-b", b"Accept", b"X-Long-Name-Here", b"Cookie2"])
_VALUES = st.binary(min_size=0, max_size=12).map(
    lambda raw: bytes(33 + byte % 94 for byte in raw)  # visible ASCII, no blanks at the ends
)
_REQUEST = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]),
    st.sampled_from([b"/", b"/a/b?c=d", b"/%20x", b"http://h/x"]),
    st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    st.binary(max_size=40),
    st.sampled_from(["length", "chunked", "none"]),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
)


def serialise(request: tuple[Any, ...]) -> bytes:
    """One request, framed as asked (by hand, not by the code under test)."""
    method, target, fields, body, framing, sizes = request
    head = [method + b" " + target + b" HTTP/1.1", b"Host: p"] + [
        name + b": " + value for name, value in fields
    ]
    if framing == "none":
        body = b""
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        pieces, at = [], 0
        for size in sizes * 10:
            if at >= len(body):
                break
            piece = body[at : at + size]
            pieces.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            at += size
        payload = b"".join(pieces) + b"0\r\n\r\n"
    else:
        payload = b""
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


def h11_reading(data: bytes) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]:
    """What h11, as a server, reads from C{data}: method, target, sorted fields, body."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    read: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
    body = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            return read
        if isinstance(event, h11.Request):
            current = (event.method, event.target, sorted((n, v) for n, v in event.headers))
            body = b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            read.append((*current, body))
            connection.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            connection.send(h11.EndOfMessage())
            connection.start_next_cycle()


class FramingOracle(SynchronousTestCase):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_REQUEST, min_size=1, max_size=4), st.lists(st.integers(min_value=1, max_value=50)))
    def test_bodies_framed_as_h11_frames_them(self, requests: list[Any], cuts: list[int]) -> None:
        """Pipelined requests in any pieces: each request, its headers and body as h11 reads them."""
        data = b"".join(serialise(request) for request in requests)
        expected = h11_reading(data)
        recorder = Recorder()
        channel, transport, _ = channel_for(recorder, allow_underscore_headers=True)
        at = 0
        for cut in cuts:
            channel.dataReceived(data[at : at + cut])
            at += cut
        channel.dataReceived(data[at:])
        seen = [
            (
                method,
                uri,
                [(n, v) for n, v in fields if n not in (b"content-length", b"transfer-encoding")],
                body,
            )
            for method, uri, fields, body in recorder.seen
        ]
        oracle = [
            (
                method,
                target,
                [(n, v) for n, v in fields if n not in (b"content-length", b"transfer-encoding")],
                body,
            )
            for method, target, fields, body in expected
        ]
        self.assertEqual(seen, oracle)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), len(requests))
        self.assertFalse(transport.disconnecting)


_LINES = st.sampled_from(
    [b"GET /a HTTP/1.1", b"POST /a HTTP/1.1", b"GET /a HTTP/1.0", b"GET  /a HTTP/1.1", b"GET /a HTTP/2.0",
     b"get /a HTTP/1.1", b"GET /a", b"GET /a\x00 HTTP/1.1", b"", b" ", b"Host: p", b"Host:", b"Host: a/b",
     b"Content-Length: 3", b"Content-Length: 0", b"Content-Length: x", b"Content-Length: 99999999999",
     b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Expect: 100-continue", b"X_A: 1", b" fold",
     b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: close", b"X-A: a\rb", b"X-A: a\nb", b"Cookie: a=1"]
)  # fmt: skip
_BODIES = st.sampled_from(
    [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"0\r\n\r\n", b"\r\n"]
)
_ENDS = st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\r\n", b"\n\n"])
_MESSAGE = st.tuples(st.lists(_LINES, min_size=1, max_size=6), _ENDS, _BODIES).map(
    lambda parts: b"\r\n".join(parts[0]) + parts[1] + parts[2]
)


class AnyBytes(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_MESSAGE, min_size=1, max_size=4), st.lists(st.integers(min_value=1, max_value=40)))
    def test_never_a_traceback(self, messages: list[bytes], cuts: list[int]) -> None:
        """Whatever bytes arrive, in whatever reads: answers or one JSON refusal and a close, never an exception."""
        channel, transport, clock = channel_for(Recorder())
        data, at = b"".join(messages), 0
        for cut in [*cuts, len(data)]:
            channel.dataReceived(data[at : at + cut])
            at += cut
        clock.advance(60)
        answer = transport.value().replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        refusals = answer.count(b'"errorType": ')
        self.assertLessEqual(refusals, 1, answer)
        if refusals:
            self.assertTrue(transport.disconnecting)
            self.assertTrue(answer.endswith(b"}}"), answer)
        channel.connectionLost(None)


class RefusedOverSockets(LoopbackMixin, TestCase):
    timeout = 20

    @inlineCallbacks
    def test_new_refusals_over_sockets(self) -> Any:
        """Over a real socket, each head llhttp lets through or refuses gets one JSON 400; none is forwarded."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", idle_timeout=60)
        asterisk = [(b"OPTIONS * HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n", "")]  # the target policy
        for data, words in LET_THROUGH + LLHTTP_REFUSES + asterisk:
            answer = yield exchange(proxy, data.replace(b" /a ", b" /api/proxy/a "))
            status, headers, body = one_response(answer)
            self.assertEqual(status, b"HTTP/1.1 400 Bad Request", data)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertIn(words, json.loads(body)["message"], data)
        self.assertEqual(upstream.seen, [])


class PipelinedOverSockets(LoopbackMixin, TestCase):
    timeout = 20

    @inlineCallbacks
    def test_pipelined_posts_forwarded_in_order(self) -> Any:
        """Pipelined POSTs with bodies, sent in one write, each reach the upstream once and are answered in order."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", idle_timeout=60)
        post = b"POST /api/proxy/p%d HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nbody%d"
        last = b"GET /api/proxy/last HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        answer = yield exchange(proxy, b"".join(post % (i, i) for i in range(3)) + last)
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 4, answer[:400])
        self.assertEqual(
            [seen.uri for seen in upstream.seen], [b"/api/p0", b"/api/p1", b"/api/p2", b"/api/last"]
        )
        self.assertEqual([seen.body for seen in upstream.seen[:3]], [b"body0", b"body1", b"body2"])
        self.assertLess(answer.find(b"p0"), answer.find(b"p1"))
