"""
WebSocket tunnelling: a request with C{Upgrade: websocket} takes over the
client's connection; the handshake is sent to the upstream over a new
connection, and after its answer the proxy copies bytes both ways, with
backpressure, until either side closes.  A handshake that cannot be sent gets
the proxy's JSON errors; nothing is retried once the handshake was sent.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ._classify import classify
from ._errors import INTERNAL, TIMEOUT, ErrorKind
from ._headers import REQUEST_ID, VIA
from ._retry import RetryPolicy

#: The longest upstream response head accepted.
MAX_HEAD = 64 * 1024


def wants_websocket(request: Request) -> bool:
    """
    @return: whether C{request} asks to be upgraded to a WebSocket.
    """
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


def handshake_bytes(method: bytes, url: bytes, headers: Headers, preserve_host: bool) -> bytes:
    """
    The request head sent upstream: the client's end-to-end headers (already
    filtered into C{headers}) plus C{Upgrade} and C{Connection: Upgrade}.
    """
    uri = URI.fromBytes(url)
    lines = [method + b" " + uri.originForm + b" HTTP/1.1"]
    if not (preserve_host and headers.hasHeader(b"host")):
        lines.append(b"Host: " + uri.netloc)
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    lines.append(b"Upgrade: websocket")
    lines.append(b"Connection: Upgrade")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _adjust_head(head: bytes, request_id: str) -> tuple[bytes, int | None, bool]:
    """
    Add C{X-Request-ID} and C{Via} to the upstream's response head.

    @return: the head, the body length of a non-101 answer (or L{None} when
        it runs to the close), and whether the answer is a 101.
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    switching = len(status) > 1 and status[1] == b"101"
    kept = [lines[0]]
    length: int | None = None
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name == b"content-length" and not switching:
            try:
                length = int(line.split(b":", 1)[1].strip())
            except ValueError:
                length = None
        if not switching and name in (b"connection", b"keep-alive"):
            continue
        kept.append(line)
    kept.append(REQUEST_ID + b": " + request_id.encode("ascii"))
    kept.append(b"Via: " + VIA)
    if not switching:
        kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n", length, switching


class ClientSide(Protocol):
    """
    Speaks on the client's connection once it is taken over.
    """

    def __init__(self) -> None:
        self.peer: UpstreamSide | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.switched:
            assert self.peer.transport is not None
            self.peer.transport.write(data)
        elif self.peer is None or not self.peer.answered:
            self.pending.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class UpstreamSide(Protocol):
    """
    Speaks to the upstream: sends the handshake, relays its answer.
    """

    def __init__(
        self,
        client: ClientSide,
        handshake: bytes,
        request_id: str,
        clock: IReactorTime,
        timeout: float,
        on_timeout: Callable[[], None],
    ) -> None:
        self.client = client
        self.handshake = handshake
        self.request_id = request_id
        self.head = b""
        self.answered = False
        self.switched = False
        self.left: int | None = None
        self._timer: IDelayedCall = clock.callLater(timeout, self._timed_out)
        self._on_timeout = on_timeout

    def cancel_timer(self) -> None:
        """
        The connection failed: no handshake timeout any more.
        """
        if self._timer.active():
            self._timer.cancel()

    def _timed_out(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._on_timeout()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.client.peer = self
        self.transport.write(self.handshake)

    def dataReceived(self, data: bytes) -> None:
        client = self.client.transport
        assert client is not None and self.transport is not None
        if not self.answered:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            self.answered = True
            if self._timer.active():
                self._timer.cancel()
            head, self.left, self.switched = _adjust_head(self.head[:end], self.request_id)
            data = self.head[end + 4 :]
            client.write(head)
            if self.switched:
                # Backpressure both ways: a slow reader pauses the other side.
                client.registerProducer(self.transport, True)  # type: ignore[attr-defined]
                self.transport.registerProducer(client, True)  # type: ignore[attr-defined]
                for early in self.client.pending:
                    self.transport.write(early)
            self.client.pending = []
        if self.left is not None:
            data = data[: self.left]
            self.left -= len(data)
        if data:
            client.write(data)
        if self.left == 0:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.client.transport is not None and not self.client.closed:
            self.client.transport.loseConnection()


def take_over(request: Request) -> tuple[ClientSide, ITransport]:
    """
    Detach the client's connection from twisted.web and give it to a
    L{ClientSide} (as Autobahn's WebSocketResource does).
    """
    channel = request.channel
    assert channel is not None
    transport = channel.transport
    assert transport is not None
    channel.setTimeout(None)
    transport.unregisterProducer()  # type: ignore[attr-defined]
    channel.transport = None
    client = ClientSide()
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = client  # TLS: the wrapper delivers to us
    else:
        transport.protocol = client  # type: ignore[attr-defined]
    client.makeConnection(transport)  # type: ignore[no-untyped-call]
    return client, transport


@define
class Tunnel:
    """
    One WebSocket request: takes over the client's connection, connects to
    the upstream (retrying a connection that was refused, as for any
    request), sends the handshake and relays.

    @ivar _error: builds the raw error response for a handshake that failed
        (its kind, the reason, the tries made).
    @ivar _opened: told the tries made once the upstream is connected.
    """

    _clock: IReactorTime
    _policy: RetryPolicy
    _endpoint: IStreamClientEndpoint
    _handshake: bytes
    _request_id: str
    _timeout: float
    _error: Callable[[ErrorKind, str, int], bytes]
    _opened: Callable[[int], None]
    _client: ClientSide | None = None
    _transport: ITransport | None = None

    def start(self, request: Request) -> None:
        """
        Take over C{request}'s connection and start the first try.
        """
        self._client, self._transport = take_over(request)
        self._attempt(1)

    def _fail(self, kind: ErrorKind, reason: str, tries: int) -> None:
        response = self._error(kind, reason, tries)
        if self._client is not None and not self._client.closed and self._transport is not None:
            self._transport.write(response)
            self._transport.loseConnection()

    def _attempt(self, tries: int) -> None:
        client = self._client
        if client is None or client.closed:
            return
        side = UpstreamSide(
            client,
            self._handshake,
            self._request_id,
            self._clock,
            self._timeout,
            lambda: self._fail(TIMEOUT, "no answer to the handshake", tries),
        )

        def failed(failure: Failure) -> None:
            side.cancel_timer()
            classified = classify(failure)
            if classified is None:
                self._fail(INTERNAL, f"proxy bug: {failure.getErrorMessage()}", tries)
                return
            decision = self._policy.after_failure(b"GET", False, classified, tries)
            if decision.retry:
                self._clock.callLater(decision.delay, self._attempt, tries + 1)
                return
            self._fail(classified.kind, classified.reason, tries)

        connected: Deferred[object] = connectProtocol(self._endpoint, side)
        connected.addCallbacks(lambda _: self._opened(tries), failed)
