"""
One persistent HTTP/1.1 connection to an upstream: writes a request (its
head in one write, its body with backpressure) and reads the response with
llhttp (L{ResponseReader}: interim answers skipped, then a body framed by
C{Content-Length}, chunked coding, or the end of the connection), handing it
over as an L{IResponse} whose body is streamed to the protocol given to
C{deliverBody}.  An invalid response fails the request and closes the
connection; so do bytes past the end of a response.

It fails the way Twisted's own HTTP client does (L{ResponseNeverReceived},
L{ResponseFailed}, L{RequestTransmissionFailed}), so that one classification
serves both; it is leaner (no URI re-parsing, no header copies, one Deferred
per request) and writes the request target exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Connection
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse

from ._chunked import ChunkedEncoder
from ._eager import send_now
from ._headers import Fields
from ._reader import ResponseReader, WireError
from ._upstream_response import UpstreamResponse

#: The most bytes read from an upstream socket at once (Twisted's default is
#: 64 KiB): a large body crosses the proxy in a quarter of the pieces.
READ_SIZE = 256 * 1024


class UpstreamConnection(Protocol):
    """
    One connection to an upstream, one request at a time.

    @ivar on_idle: called when a response has ended and the connection can
        carry another request.
    @ivar on_lost: called once when the connection is gone.
    """

    def __init__(
        self,
        on_idle: Callable[[UpstreamConnection], None],
        on_lost: Callable[[UpstreamConnection], None],
    ) -> None:
        self.on_idle = on_idle
        self.on_lost = on_lost
        self.idle_since = 0.0
        self.connected = False
        self._closing = False
        self._reader: ResponseReader | None = None
        self._last_reader: ResponseReader | None = None  # whose parser the next response may reuse
        self._result: Deferred[IResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._body: IBodyProducer | None = None
        self._encoder: ChunkedEncoder | None = None

    # Protocol
    def connectionMade(self) -> None:
        self.connected = True
        if isinstance(self.transport, Connection):  # plain TCP: read large bodies in fewer, larger pieces
            self.transport.bufferSize = READ_SIZE

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.connected = False
        sending = self._body is not None
        self._stop_body()
        reader = self._detach()
        result, self._result = self._result, None
        if result is not None:
            if sending:
                result.errback(Failure(RequestTransmissionFailed([reason])))
            elif reader is not None and reader.seen:
                result.errback(Failure(ResponseFailed([reason])))
            else:
                result.errback(Failure(ResponseNeverReceived([reason])))
        response, self._response = self._response, None
        if response is not None:
            until_close = reader is not None and reader.until_close
            if until_close and reason.check(ConnectionDone):
                response.body_ended(Failure(PotentialDataLoss()))
            else:
                response.body_ended(Failure(ResponseFailed([reason])))
        self.on_lost(self)

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:  # unasked-for bytes: the connection is unusable
            self.close()
            return
        try:
            reader.feed(data)
        except WireError as error:
            self._broken(Failure(error))

    def _detach(self) -> ResponseReader | None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.detach()
        return reader

    # Requests
    def send(self, head: bytes, body: IBodyProducer | None, method: bytes) -> Deferred[IResponse]:
        """
        Write one request: C{head} (request line and headers, ready to send)
        then C{body}.
        """
        assert self.transport is not None and self._result is None
        if not self.connected:
            return fail(RequestNotSent())
        result: Deferred[IResponse] = Deferred(self._cancel)
        self._result = result
        last, self._last_reader = self._last_reader, None
        head_request = method == b"HEAD"
        reader = ResponseReader(self, head_request) if last is None else last.next_reader(self, head_request)
        self._reader = reader
        if body is None:
            send_now(self.transport, head)
        else:
            self.transport.write(head)
            self._send_body(body)
        return result

    def _send_body(self, body: IBodyProducer) -> None:
        transport = self.transport
        assert transport is not None
        consumer: IConsumer = transport  # type: ignore[assignment]
        self._encoder = None
        if body.length is UNKNOWN_LENGTH:
            consumer = self._encoder = ChunkedEncoder(transport)  # type: ignore[arg-type]
        self._body = body
        transport.registerProducer(body, True)  # type: ignore[attr-defined]
        try:
            written = body.startProducing(consumer)
        except Exception:
            written = Deferred()
            written.errback()
        written.addCallbacks(self._body_sent, self._body_failed)

    def _body_sent(self, _: object) -> None:
        if self._body is None:
            return
        self._body = None
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            if self._encoder is not None:
                self._encoder.finish()

    def _body_failed(self, failure: Failure) -> None:
        if self._body is None:
            return
        self._body = None
        self._detach()
        result, self._result = self._result, None
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.close()
        if result is not None:
            result.errback(Failure(RequestTransmissionFailed([failure])))

    def _stop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            if self.transport is not None:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
            body.stopProducing()

    def _cancel(self, result: Deferred[IResponse]) -> None:
        if self._result is result:
            self._result = None
            self.abandon()
            result.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

    # What the reader hands over (ResponseSink)
    def head_read(
        self, minor: int, code: int, phrase: bytes, fields: Fields, control: Fields, length: int | object
    ) -> None:
        response = UpstreamResponse((b"HTTP", 1, minor), code, phrase, fields, control, length, self)
        result, self._result = self._result, None
        self._response = response
        if result is not None:
            result.callback(response)

    def body_read(self, data: bytes) -> None:
        if self._response is not None:
            self._response.body_data(data)

    def body_ended(self, reusable: bool) -> None:
        response, self._response = self._response, None
        self._last_reader, self._reader = self._reader, None
        if self._body is not None:
            reusable = False  # answered before the body was sent: stop sending
            self._stop_body()
        # Back to the pool first: whoever reads the body may send the next
        # request as soon as it ends, and should find this connection.
        if reusable and self.connected and not self._closing:
            self.on_idle(self)
        else:
            self.close()
        if response is not None:
            response.body_ended(None)  # whole

    def _broken(self, failure: Failure) -> None:
        self._detach()
        result, self._result = self._result, None
        if result is not None:
            result.errback(Failure(ResponseFailed([failure])))
        response, self._response = self._response, None
        if response is not None:
            response.body_ended(Failure(ResponseFailed([failure])))
        self.close()

    def close(self) -> None:
        """
        Close the connection once what it has to write is written.
        """
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    # Flow control (from the response body's transport)
    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.transport is not None and self.connected and not self._closing:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def abandon(self) -> None:
        """
        Give up the request or response in progress: the connection is closed.
        """
        self._detach()
        self._stop_body()
        if self.transport is not None:
            self._closing = True
            self.transport.abortConnection()  # type: ignore[attr-defined]
