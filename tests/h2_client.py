"""
A small HTTP/2 client for the tests (hyper-h2 over Twisted's TLS, ALPN
C{h2}): several streams on one connection, each answer collected, and the
reading pace in the test's hands (stream windows held back, or the socket
not read at all).
"""

from __future__ import annotations

from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from .helpers import reactor

#: The largest flow-control window HTTP/2 allows.
HUGE_WINDOW = 2**31 - 1


@attrs.define
class Answer:
    """One stream's answer as the client saw it."""

    stream_id: int
    status: int = 0
    headers: dict[bytes, bytes] = attrs.field(factory=dict)
    body: list[bytes] = attrs.field(factory=list)
    received: int = 0
    reset: int | None = None
    ended: bool = False  # the stream ended (END_STREAM or RST_STREAM), not the connection
    done: Deferred[Answer] = attrs.field(factory=Deferred)

    @property
    def content(self) -> bytes:
        return b"".join(self.body)


class H2Client(Protocol):
    """
    An HTTP/2 client connection.

    @ivar window: the stream and connection windows it grants.
    @ivar keep: keep each body's bytes (else only count them).
    @ivar slow: stream ids whose window is never reopened (their data is
        acknowledged on the connection only).
    """

    def __init__(self, window: int = 65535, keep: bool = True) -> None:
        self.window = window
        self.keep = keep
        self.slow: set[int] = set()
        self.answers: dict[int, Answer] = {}
        self.uploads: dict[int, bytes] = {}
        self.remote_settings: dict[int, int] = {}
        self.settled: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.terminated: h2.events.ConnectionTerminated | None = None
        # Sent as the test writes them, forbidden fields included.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)

    def connectionMade(self) -> None:
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window}
        )
        self.conn.initiate_connection()
        if self.window > 65535:
            self.conn.increment_flow_control_window(self.window - 65535)
        self._flush()

    def request(
        self, method: bytes, path: bytes, headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b""
    ) -> Answer:
        """Send a request on a new stream; its answer fills in as it arrives."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path),
        ]
        self.conn.send_headers(stream_id, fields + list(headers), end_stream=not body)
        answer = self.answers[stream_id] = Answer(stream_id)
        if body:
            self.uploads[stream_id] = body
            self._upload(stream_id)
        self._flush()
        return answer

    def _upload(self, stream_id: int) -> None:
        # As much of the body as the proxy's windows allow, in frames it takes.
        body = self.uploads.get(stream_id, b"")
        while body:
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if size <= 0:
                break
            self.conn.send_data(stream_id, body[:size], end_stream=len(body) <= size)
            body = body[size:]
        self.uploads[stream_id] = body

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self._event(event)
        self._flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            if not self.settled.called:
                self.settled.callback(None)
        elif isinstance(event, h2.events.ResponseReceived):
            answer = self.answers[event.stream_id]
            fields = dict(event.headers)
            answer.status = int(fields.pop(b":status"))
            answer.headers = fields
        elif isinstance(event, h2.events.DataReceived):
            answer = self.answers[event.stream_id]
            answer.received += len(event.data)
            if self.keep:
                answer.body.append(event.data)
            if event.stream_id in self.slow:
                self.conn.increment_flow_control_window(event.flow_controlled_length)
            else:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.answers[event.stream_id].reset = event.error_code
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in list(self.uploads):
                self._upload(stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event

    def _finish(self, stream_id: int) -> None:
        answer = self.answers[stream_id]
        answer.ended = True
        if not answer.done.called:
            answer.done.callback(answer)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # type: ignore[override]
        # An answer cut short by the connection's end is done, not ended (no
        # failed Deferred is left for the garbage collector to report).
        for answer in self.answers.values():
            if not answer.done.called:
                answer.done.callback(answer)
        self.closed.callback(None)


def connect_h2(port: int, ca_pem: bytes, client: H2Client | None = None) -> Deferred[H2Client]:
    """
    Connect to C{127.0.0.1:port} over TLS offering only C{h2}; fires once
    the server's settings arrived.
    """
    authority = ssl.Certificate.loadPEM(ca_pem)
    options = ssl.optionsForClientTLS("localhost", trustRoot=authority, acceptableProtocols=[b"h2"])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    protocol = client or H2Client()
    connected: Deferred[Any] = connectProtocol(endpoint, protocol)
    connected.addCallback(lambda p: p.settled.addCallback(lambda _: p))
    return connected
