"""
HTTP/2 on TLS listeners, chosen by ALPN.

L{NegotiatedChannel} wraps whatever HTTP/1.1 protocol the site builds (its
own channel, with its limits) and, once the TLS handshake chose C{h2}, hands
the connection to a L{ProxyH2Connection} instead, as twisted.web's
C{_GenericHTTPChannelProtocol} does.  HTTP/2 requests then go through
twisted.web's C{Request} and the site's resource, like HTTP/1.1 ones.

L{ProxyH2Connection} is Twisted's C{H2Connection} with what a front door
adds: at most C{max_streams} concurrent streams (C{SETTINGS_MAX_CONCURRENT_STREAMS}),
a refused head answered on its own stream with the proxy's JSON error (the
connection and its other streams carry on, RFC 9113 section 8.1.1), and at most
L{STREAM_BUFFER} bytes queued per stream: an answer to a slow reader waits
upstream instead of in the proxy's memory, whatever flow-control window the
client grants (Twisted queues up to the window, which a client may set to
2 GiB), and a slow stream pauses its own upstream, not the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection
from zope.interface import implementer

from ._channel import MAX_HEAD_BYTES
from ._h2_heads import HTTP2, HeadProblem, error_body, head_problem
from ._headers import new_request_id
from ._refusal import MAX_LOGGED_TARGET, Refusal, RefusalListener

#: The ALPN token of HTTP/2.
H2 = b"h2"
#: Bytes of answer one stream may hold queued in the proxy, whatever its window.
STREAM_BUFFER = 256 * 1024


@implementer(IProtocol)
class NegotiatedChannel:
    """
    A connection's protocol: the site's HTTP/1.1 channel, or an HTTP/2
    connection when TLS negotiated C{h2} by ALPN.  Attributes it does not
    have are the current channel's.
    """

    def __init__(self, channel: Any, make_h2: Callable[[], H2Connection]) -> None:
        """
        @param channel: the site's HTTP/1.1 protocol, already set up.
        @param make_h2: builds the HTTP/2 connection, if ALPN chooses it.
        """
        self._channel = channel
        self._make_h2 = make_h2
        self._chosen = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def makeConnection(self, transport: Any) -> None:
        self._channel.makeConnection(transport)

    def connectionMade(self) -> None:
        self._channel.connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self._chosen:
            # The first bytes come after the TLS handshake: ALPN has chosen.
            self._chosen = True
            if getattr(self._channel.transport, "negotiatedProtocol", None) == H2:
                self._channel = self._switch(self._channel)
        self._channel.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        self._channel.connectionLost(reason)

    def _switch(self, http11: Any) -> H2Connection:
        # Only the transport's producer API and the idle timer of the HTTP/1.1
        # protocol are assumed (it has read nothing yet), so that any channel
        # the site builds can be replaced.
        transport = http11.transport
        transport.unregisterProducer()
        stop_timer = getattr(http11, "setTimeout", None)
        if stop_timer is not None:
            stop_timer(None)
        h2 = self._make_h2()
        h2.makeConnection(transport)
        transport.registerProducer(h2, True)  # a slow client pauses every stream's sender
        return h2


class ProxyH2Connection(H2Connection):
    """
    Twisted's C{H2Connection} with the proxy's stream limit, head checks
    and backpressure.

    @ivar max_streams: the most concurrent streams a client may open.
    """

    def __init__(
        self,
        site: Any,
        max_streams: int,
        max_body: int,
        on_refused: RefusalListener | None = None,
    ) -> None:
        """
        @param site: the site whose requests and resource serve the streams
            (its reactor, request factory and idle timeout).
        """
        reactor: IReactorTime = site.reactor
        super().__init__(reactor)  # type: ignore[no-untyped-call]
        self.requestFactory = site.requestFactory
        self.site = self.factory = site
        self.timeOut = self._idle_timeout = site.timeOut
        self.callLater = reactor.callLater  # type: ignore[method-assign,assignment]
        # The head is validated here (head_problem, hyper-h2's own rules
        # included) so that a bad one is a stream error, not the connection's end.
        config = H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False)
        self.conn = H2State(config=config)
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
            },
        )
        self.max_streams = max_streams
        self._max_body = max_body
        self._on_refused = on_refused

    def _requestReceived(self, event: RequestReceived) -> None:
        headers = list(event.headers or ())
        problem = head_problem(headers, self._max_body)
        if problem is not None:
            self._refuse(event.stream_id, headers, problem)
            return
        super()._requestReceived(event)  # type: ignore[no-untyped-call]
        # As HTTP/1.1's channel does, no idle timeout while a request is
        # handled (an upstream slow to answer, a quiet SSE stream).
        self.setTimeout(None)  # type: ignore[no-untyped-call]

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)  # type: ignore[no-untyped-call]
        if not self.streams and self._stillProducing:
            self.setTimeout(self._idle_timeout)  # type: ignore[no-untyped-call]

    def _refuse(self, stream_id: int, headers: list[tuple[bytes, bytes]], problem: HeadProblem) -> None:
        kind = problem.kind
        request_id = new_request_id()
        details = {"attempts": 0, "durationMs": 0, "requestId": request_id, "suggestion": problem.message}
        body = error_body(kind, problem.message, details)
        fields = [
            (b":status", b"%d" % kind.status),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", request_id.encode("ascii")),
        ]
        try:
            self.conn.send_headers(stream_id, fields)
            self.conn.send_data(stream_id, body, end_stream=True)
        except ProtocolError:  # no window left for the body: the stream is reset
            pass
        with suppress(ProtocolError):  # the rest of the request is not wanted (RFC 9113 section 8.1)
            self.conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        self._tryToWriteControlData()  # type: ignore[no-untyped-call]
        if self._on_refused is not None:
            found = dict(headers)
            method = found.get(b":method", b"-").decode("latin-1")
            target = found.get(b":path", b"-").decode("latin-1")[:MAX_LOGGED_TARGET]
            refusal = Refusal(
                kind.status, kind.error_type, method, target, request_id, 0.0, problem.message, HTTP2
            )
            self._on_refused.request_refused(refusal)

    # Frames for a refused (or already finished) stream are dropped; their
    # bytes still count as read for the connection's window.
    def _requestDataReceived(self, event: DataReceived) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)  # type: ignore[no-untyped-call]
            return
        with suppress(ProtocolError):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _requestEnded(self, event: StreamEnded) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)  # type: ignore[no-untyped-call]

    def _requestAborted(self, event: StreamReset) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:
        super().connectionLost(reason, _cancelTimeouts)  # type: ignore[no-untyped-call]
        # Closing the connection itself (after a GOAWAY either way, a protocol
        # error), it stays the transport's producer, and a TLS transport
        # waits for its producer to go before it closes: without this, the
        # connection lingered until the idle timeout.
        transport: Any = self.transport
        if transport is not None and getattr(transport, "disconnecting", False):
            transport.unregisterProducer()

    # However large a window the client grants, a stream holds at most
    # STREAM_BUFFER bytes queued in the proxy: beyond, its producer (the
    # upstream read) pauses until frames have gone out.
    def remainingOutboundWindow(self, streamID: int) -> int:
        window: int = self.conn.local_flow_control_window(streamID)
        queued = sum(len(chunk) for chunk in self._outboundStreamQueues[streamID] if isinstance(chunk, bytes))
        return min(window, STREAM_BUFFER) - queued

    def _sendPrioritisedData(self, *args: object) -> None:
        super()._sendPrioritisedData(*args)  # type: ignore[no-untyped-call]
        if self._consumerBlocked is None:
            for stream in list(self.streams.values()):
                if stream.producer is not None and not stream._producerProducing:
                    stream.windowUpdated()
