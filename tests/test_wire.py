"""
The upstream connection in memory: what it writes, how it reads every
response framing, and how it fails (the same exceptions as Twisted's client).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from sora2proxy.http._chunked import ChunkedEncoder
from sora2proxy.http._reader import MAX_HEAD, MAX_HEADERS, MAX_TRAILERS, WireError
from sora2proxy.http._wire import UpstreamConnection
from sora2proxy.resilience._classify import classify


class Body(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self.reason = reason


@implementer(IBodyProducer)
class Slow:
    """A body that writes only when told to."""

    def __init__(self, length: Any) -> None:
        self.length = length
        self.consumer: IConsumer | None = None
        self.done: Deferred[None] = Deferred()
        self.stopped = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        return self.done

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class WireTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.idle: list[UpstreamConnection] = []
        self.lost: list[UpstreamConnection] = []
        self.connection = UpstreamConnection(self.idle.append, self.lost.append)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def send(self, method: bytes = b"GET", body: IBodyProducer | None = None) -> Deferred[Any]:
        return self.connection.send(method + b" /x HTTP/1.1\r\nHost: u\r\n\r\n", body, method)

    def answer(self, raw: bytes, method: bytes = b"GET", pieces: int = 0) -> tuple[Any, Body]:
        result = self.send(method)
        if pieces:
            for i in range(0, len(raw), pieces):
                self.connection.dataReceived(raw[i : i + pieces])
        else:
            self.connection.dataReceived(raw)
        response = self.successResultOf(result)
        body = Body()
        response.deliverBody(body)
        return response, body

    def test_writes_head_and_small_body_as_given(self) -> None:
        """The request head and a small body are written as given."""

        @implementer(IBodyProducer)
        class Small:
            length = 5

            def startProducing(self, consumer: IConsumer) -> Deferred[None]:
                consumer.write(b"hello")
                return succeed(None)

            def stopProducing(self) -> None:
                pass

        self.connection.send(b"POST /a;?= HTTP/1.1\r\n\r\n", Small(), b"POST")
        self.assertEqual(self.transport.value(), b"POST /a;?= HTTP/1.1\r\n\r\nhello")

    def test_content_length_response_in_single_bytes(self) -> None:
        """A Content-Length answer read a byte at a time keeps its status, phrase, repeated headers and body."""
        raw = b"HTTP/1.1 201 Created\r\nContent-Type: a/b\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabc"
        response, body = self.answer(raw, pieces=1)
        self.assertEqual((response.code, response.phrase, response.length), (201, b"Created", 3))
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1", b"2"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        self.assertEqual(response.connection_fields[b"content-length"], (b"Content-Length", [b"3"]))
        self.assertEqual(body.data, b"abc")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.connection])

    def test_chunked_response(self) -> None:
        """A chunked answer's body is decoded and the connection goes back to the pool."""
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
        response, body = self.answer(raw, pieces=2)
        self.assertIs(response.length, UNKNOWN_LENGTH)
        self.assertEqual(body.data, b"abcde")
        self.assertEqual(self.idle, [self.connection])

    def test_body_until_close(self) -> None:
        """A body with no framing is read until the connection closes, and the connection is not reused."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\n\r\nsome")
        self.connection.dataReceived(b" more")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(body.data, b"some more")
        assert body.reason is not None
        self.assertTrue(body.reason.check(PotentialDataLoss))
        self.assertEqual(self.idle, [])

    def test_reset_cuts_body_until_close(self) -> None:
        """A reset during a body read until close fails the body."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\n\r\nsome")
        self.connection.connectionLost(Failure(ConnectionLost()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_short_body_fails(self) -> None:
        """A body shorter than its Content-Length fails, and the connection is dropped."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.connection.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertEqual(self.lost, [self.connection])

    def test_head_and_304_keep_content_length(self) -> None:
        """A HEAD answer and a 304 keep their Content-Length header and have no body."""
        response, _body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"HEAD")
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"1234"])
        self.assertEqual(response.length, 0)
        self.assertEqual(self.idle, [self.connection])
        response, _body = self.answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"9"])
        self.assertEqual(self.idle, [self.connection, self.connection])

    def test_status_line_in_single_bytes(self) -> None:
        """A status line that arrives a byte at a time is read."""
        response, body = self.answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", pieces=1
        )
        self.assertEqual((response.code, body.data), (200, b"ok"))

    def test_informational_responses_skipped(self) -> None:
        """100 and 103 answers are skipped: the client gets the final answer alone."""
        raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        response, body = self.answer(raw + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual((response.code, body.data), (200, b"ok"))
        self.assertIsNone(response.headers.getRawHeaders(b"link"))

    def test_connection_close_not_reused(self) -> None:
        """An answer with Connection: close closes the connection."""
        self.answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_http10_not_reused(self) -> None:
        """An HTTP/1.0 answer without keep-alive closes the connection."""
        _response, body = self.answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(body.data, b"ok")
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_http10_keep_alive_reused(self) -> None:
        """An HTTP/1.0 answer with Connection: keep-alive leaves the connection to the pool."""
        self.answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.idle, [self.connection])

    def test_bytes_past_content_length_not_reused(self) -> None:
        """Bytes past Content-Length close the connection, and never become another answer."""
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled)
        self.assertEqual(body.data, b"ok")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_bytes_past_chunked_end_not_reused(self) -> None:
        """Bytes past the last chunk close the connection."""
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"
        _response, body = self.answer(raw)
        self.assertEqual(body.data, b"ok")
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_head_answer_then_get_on_the_same_connection(self) -> None:
        """A HEAD answer's Content-Length frames no body: the next GET gets its own answer."""
        response, body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"HEAD")
        self.assertEqual((response.code, body.data), (200, b""))
        self.assertEqual(self.idle, [self.connection])
        response, body = self.answer(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nget")
        self.assertEqual((response.code, body.data), (201, b"get"))
        self.assertEqual(self.idle, [self.connection, self.connection])

    def test_bytes_after_a_head_answer_not_reused(self) -> None:
        """Body bytes sent after a HEAD answer close the connection."""
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody", b"HEAD")
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_upgrade_advertised_in_a_200_is_a_body_until_close(self) -> None:
        """A 200 that advertises Upgrade with no framing has its body read until the connection ends."""
        raw = b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nsome"
        response, body = self.answer(raw)
        self.connection.dataReceived(b" more")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((response.code, body.data), (200, b"some more"))
        assert body.reason is not None
        self.assertTrue(body.reason.check(PotentialDataLoss))

    def test_both_framings_is_invalid(self) -> None:
        """A response framed by both Content-Length and chunked coding is refused (RFC 9112 section 6.3)."""
        self.assert_broken(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
        )

    def test_folded_header_is_invalid(self) -> None:
        """An obs-folded header line is refused, not joined."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n")

    def assert_broken(self, raw: bytes) -> None:
        result = self.send()
        self.connection.dataReceived(raw)
        failure = self.failureResultOf(result, ResponseFailed)
        self.assertTrue(failure.value.reasons[0].check(WireError))
        classified = classify(failure)
        assert classified is not None
        self.assertEqual((classified.kind.error_type, classified.reached_upstream), ("UPSTREAM_ERROR", True))
        self.assertTrue(self.transport.disconnecting)

    def test_bad_status_line(self) -> None:
        """A status line of another HTTP version is refused."""
        self.assert_broken(b"HTTP/2 200 OK\r\n\r\n")

    def test_bad_status_code(self) -> None:
        """A status code that is not three digits is refused."""
        self.assert_broken(b"HTTP/1.1 2x0 OK\r\n\r\n")

    def test_unasked_switching_protocols(self) -> None:
        """A 101 the request did not ask for is refused."""
        self.assert_broken(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")

    def test_bad_header_line(self) -> None:
        """A header name with a space in it is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")

    def test_conflicting_content_lengths(self) -> None:
        """Two different Content-Length values are refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")

    def test_headers_too_large(self) -> None:
        """A head over 64 KiB is refused, whether it ends or not."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD)

    def test_complete_head_too_large(self) -> None:
        """A complete head one byte over 64 KiB is refused."""
        start = b"HTTP/1.1 200 OK\r\nX: "
        self.assert_broken(start + b"a" * (MAX_HEAD - len(start) - 3) + b"\r\n\r\n")

    def test_too_many_headers(self) -> None:
        """More header fields than the limit is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n")

    def test_bare_cr_in_reason_phrase(self) -> None:
        """A bare CR in the reason phrase is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\rSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n")

    def test_control_bytes_in_reason_phrase(self) -> None:
        """A NUL or another control byte in the reason phrase is refused."""
        self.assert_broken(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n")
        self.setUp()
        self.assert_broken(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n")

    def test_nul_in_header_value(self) -> None:
        """A NUL in a header value is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n")

    def test_huge_content_length(self) -> None:
        """A 5,000-digit Content-Length is refused, not raised out of dataReceived."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")

    def test_folded_transfer_encoding(self) -> None:
        """An obs-folded Transfer-Encoding is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n chunked\r\n\r\n0\r\n\r\n")

    def test_other_transfer_codings(self) -> None:
        """A transfer coding the proxy cannot undo (anything but chunked alone) is refused."""
        for coding in (b"gzip", b"gzip, chunked", b"chunked, chunked"):
            self.setUp()
            self.assert_broken(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n" % coding)

    def test_bare_lf_head(self) -> None:
        """A head whose lines end in a bare LF is refused."""
        self.assert_broken(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")

    def test_rtsp_and_leading_blank_line(self) -> None:
        """An RTSP status line, or a blank line before the status line, is refused (llhttp would take both)."""
        self.assert_broken(b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.setUp()
        self.assert_broken(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_http09_and_http12(self) -> None:
        """Versions other than HTTP/1.0 and 1.1 are refused."""
        self.assert_broken(b"HTTP/0.9 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.setUp()
        self.assert_broken(b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_bad_chunk_with_the_head(self) -> None:
        """A bad chunk that arrives with the head fails the request: nothing of the response is handed over."""
        self.assert_broken(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")

    def test_bad_chunk_after_the_head(self) -> None:
        """A bad chunk that arrives after the head fails the body and closes the connection."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.connection.dataReceived(b"zz\r\n")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertTrue(self.transport.disconnecting)

    def test_lost_before_any_byte(self) -> None:
        """A connection lost before any byte of an answer fails with ResponseNeverReceived."""
        result = self.send()
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, ResponseNeverReceived)
        self.assertEqual(self.lost, [self.connection])

    def test_send_on_a_lost_connection_is_not_sent(self) -> None:
        """A request sent on a lost connection fails as not sent: safe to retry."""
        self.connection.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(self.send(), RequestNotSent)
        classified = classify(failure)
        assert classified is not None
        self.assertFalse(classified.reached_upstream)

    def test_lost_during_head(self) -> None:
        """A connection lost in the middle of the head fails with ResponseFailed."""
        result = self.send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.connection.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(result, ResponseFailed)

    def test_lost_while_sending_body(self) -> None:
        """A connection lost while the body is sent fails the request and stops the body."""
        body = Slow(10)
        result = self.send(b"PUT", body)
        self.connection.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(result, RequestTransmissionFailed)
        self.assertTrue(body.stopped)

    def test_cancel_aborts(self) -> None:
        """Cancelling a try aborts its connection, and the failure says it was cancelled."""
        result = self.send()
        result.cancel()
        failure = self.failureResultOf(result, ResponseNeverReceived)
        self.assertTrue(self.transport.disconnecting or self.transport.disconnected)
        classified = classify(failure)
        assert classified is not None
        self.assertEqual(classified.reason, "the try was cancelled")

    def test_early_answer_stops_the_body(self) -> None:
        """An answer before the whole body is sent stops the body and closes the connection."""
        body = Slow(1000)
        result = self.send(b"PUT", body)
        self.connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(result).code, 413)
        self.assertTrue(body.stopped)
        self.assertEqual(self.idle, [])
        self.assertTrue(self.transport.disconnecting)

    def test_unknown_length_body_is_chunked(self) -> None:
        """A body of unknown length is sent in chunked coding."""
        body = Slow(UNKNOWN_LENGTH)
        self.send(b"POST", body)
        assert body.consumer is not None
        body.consumer.write(b"abc")
        body.done.callback(None)
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))

    def test_body_buffered_until_delivered(self) -> None:
        """Body bytes that arrive before deliverBody are kept, reading paused, and handed over whole."""
        result = self.send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        response = self.successResultOf(result)
        self.assertEqual(self.transport.producerState, "paused")
        self.connection.dataReceived(b"cd")
        body = Body()
        response.deliverBody(body)
        self.assertEqual(body.data, b"abcd")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.transport.producerState, "producing")

    def test_body_transport_inert_after_the_response(self) -> None:
        """The body's transport does nothing once its answer has ended: the next answer is untouched."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert body.transport is not None
        body.transport.pauseProducing()  # type: ignore[attr-defined]
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.transport.producerState, "producing")
        self.assertFalse(self.transport.disconnecting)
        self.answer(b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_pause_stops_reading(self) -> None:
        """Pausing the body's transport pauses reading; stopping it closes the connection."""
        _response, body = self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
        assert body.transport is not None
        body.transport.pauseProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.transport.producerState, "paused")
        body.transport.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.transport.producerState, "producing")
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertTrue(self.transport.disconnecting or self.transport.disconnected)

    def test_unasked_bytes_close_an_idle_connection(self) -> None:
        """Bytes from the upstream with no request waiting close the connection."""
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)


class ChunkedTests(SynchronousTestCase):
    """Chunked bodies as llhttp decodes them, through the connection."""

    def setUp(self) -> None:
        self.idle: list[UpstreamConnection] = []
        self.connection = UpstreamConnection(self.idle.append, lambda _: None)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def read(self, raw: bytes, piece: int) -> tuple[Body, Deferred[Any]]:
        result = self.connection.send(b"GET / HTTP/1.1\r\n\r\n", None, b"GET")
        body = Body()
        result.addCallback(lambda response: response.deliverBody(body))
        for i in range(0, len(raw), piece):
            self.connection.dataReceived(raw[i : i + piece])
        return body, result

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=40), max_size=6),
        st.integers(min_value=1, max_value=50),
    )
    def test_any_split_decodes(self, chunks: list[bytes], piece: int) -> None:
        """Whatever the chunk sizes and however the bytes arrive, the body comes out whole and the connection is reused."""
        self.setUp()  # a fresh connection for each example
        written: list[bytes] = []

        class Sink:
            def write(self, data: bytes) -> None:
                written.append(data)

        encoder = ChunkedEncoder(Sink())  # type: ignore[arg-type]
        for chunk in chunks:
            encoder.write(chunk)
        encoder.finish()
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        body, _ = self.read(head + b"".join(written), piece)
        self.assertEqual(body.data, b"".join(chunks))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.connection])

    def assert_fails(self, body_bytes: bytes, piece: int = 1000) -> None:
        body, _ = self.read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1000)
        for i in range(0, len(body_bytes), piece):
            self.connection.dataReceived(body_bytes[i : i + piece])
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertTrue(body.reason.value.reasons[0].check(WireError))
        self.assertTrue(self.transport.disconnecting)

    def test_chunk_size_line_limited(self) -> None:
        """A chunk-size line that goes on and on fails the body."""
        self.assert_fails(b"1;" + b"x" * (MAX_TRAILERS + 10), piece=100)

    def test_trailers_limited(self) -> None:
        """Trailers past 16 KiB fail the body."""
        self.assert_fails(b"0\r\n" + b"T: x\r\n" * 3000)

    def test_one_long_trailer_limited(self) -> None:
        """One trailer field that never ends fails the body before it is buffered whole."""
        self.assert_fails(b"0\r\nT: " + b"x" * (MAX_TRAILERS * 2), piece=100)

    def test_data_not_followed_by_crlf(self) -> None:
        """Chunk data not followed by CRLF fails the body."""
        self.assert_fails(b"1\r\naXX")

    def test_leading_space_in_chunk_size(self) -> None:
        """A chunk size with a leading space is refused."""
        self.assert_fails(b" 2\r\nok\r\n0\r\n\r\n")

    def test_seventeen_hex_digits(self) -> None:
        """A chunk size over 64 bits is refused."""
        self.assert_fails(b"10000000000000000\r\nok\r\n0\r\n\r\n")
