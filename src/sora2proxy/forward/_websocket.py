"""
WebSocket tunnelling: a request with C{Upgrade: websocket} takes over the
client's connection; the handshake is sent to the upstream over a new
connection, and after its answer the proxy copies bytes both ways, with
backpressure, until either side closes or no byte has moved either way for
C{--tunnel-idle-timeout}.  A handshake that cannot be sent gets the proxy's
JSON errors; nothing is retried once the handshake was sent.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from .._errors import INTERNAL, TIMEOUT, UPSTREAM_ERROR, ErrorKind
from ..http._handshake import HandshakeHead, WireError
from ..http._headers import REQUEST_ID, VIA, canonical
from ..http._takeover import take_over
from ..resilience._classify import classify
from ..resilience._retry import RetryPolicy

#: The longest upstream response head accepted.
MAX_HEAD = 64 * 1024

#: Seconds an idle tunnel's connections get to close cleanly before they are
#: aborted (twisted.web's C{HTTPChannel.abortTimeout} for a timed-out client).
ABORT_AFTER = 15.0


@define
class IdleTimer:
    """
    Calls C{on_idle} once L{touch} has not been called for C{timeout}
    seconds (0: never), as L{twisted.protocols.policies.TimeoutMixin} does.
    """

    _clock: IReactorTime
    _timeout: float
    _on_idle: Callable[[], None]
    _call: IDelayedCall | None = None

    def start(self) -> None:
        """
        Start waiting (once; later calls do nothing).
        """
        if self._timeout > 0 and self._call is None:
            self._call = self._clock.callLater(self._timeout, self._on_idle)

    def touch(self) -> None:
        """
        Bytes moved: wait the whole C{timeout} again.
        """
        if self._call is not None and self._call.active():
            self._call.reset(self._timeout)

    def stop(self) -> None:
        """
        Stop waiting for good.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()


_UPGRADE = canonical(b"upgrade")


def wants_websocket(request: Request) -> bool:
    """
    @return: whether C{request} asks to be upgraded to a WebSocket.
    """
    upgrades = request.requestHeaders._rawHeaders.get(_UPGRADE)
    if not upgrades:
        return False
    return upgrades[-1].strip().lower() == b"websocket"


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


def _adjust_head(head: bytes, request_id: str) -> tuple[bytes, int | None, int]:
    """
    Add C{X-Request-ID} and C{Via} to the upstream's response head.

    @return: the head, the body length of a non-101 answer (or L{None} when
        it runs to the close), and the status code (502 if it has none).
    """
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    code = status_line[1] if len(status_line) > 1 else b""
    status = int(code) if len(code) == 3 and code.isdigit() else 502
    switching = status == 101
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
    return b"\r\n".join(kept) + b"\r\n\r\n", length, status


class ClientSide(Protocol):
    """
    Speaks on the client's connection once it is taken over.

    @ivar pending: what the client sent before the upstream answered (once
        it holds more than L{MAX_HEAD} bytes, the client is read no more
        until the answer).
    @ivar idle: touched by the bytes either way once the upstream answered.
    @ivar on_lost: told when the client's connection is closed.
    """

    def __init__(self, idle: IdleTimer, on_lost: Callable[[], None]) -> None:
        self.peer: UpstreamSide | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.idle = idle
        self.on_lost = on_lost

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.switched:
            assert self.peer.transport is not None
            self.idle.touch()
            self.peer.transport.write(data)
        elif self.peer is None or not self.peer.answered:
            self.pending.append(data)
            if sum(map(len, self.pending)) > MAX_HEAD and self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self.idle.stop()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
        self.on_lost()


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
        on_fail: Callable[[ErrorKind, str], None],
    ) -> None:
        self.client = client
        self.handshake = handshake
        self.request_id = request_id
        self.head = b""
        self._checked = HandshakeHead()
        self.answered = False
        self.switched = False
        self.status = 0
        self.left: int | None = None
        self._timer: IDelayedCall = clock.callLater(timeout, self._timed_out)
        self._on_fail = on_fail

    def cancel_timer(self) -> None:
        """
        The connection failed: no handshake timeout any more.
        """
        if self._timer.active():
            self._timer.cancel()

    def _timed_out(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        self._on_fail(TIMEOUT, "no answer to the handshake")

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.client.closed:
            self.transport.loseConnection()
            return
        self.client.peer = self
        self.transport.write(self.handshake)

    def dataReceived(self, data: bytes) -> None:
        client = self.client.transport
        assert client is not None and self.transport is not None
        self.client.idle.touch()
        if not self.answered:
            self.head += data
            try:
                self._checked.feed(data)
            except WireError as invalid:  # nothing of it reaches the client
                self.cancel_timer()
                self.transport.abortConnection()  # type: ignore[attr-defined]
                self._on_fail(UPSTREAM_ERROR, str(invalid))
                return
            if not self._checked.code:
                return
            end = self.head.find(b"\r\n\r\n")
            self.cancel_timer()
            self.answered = True
            head, self.left, self.status = _adjust_head(self.head[:end], self.request_id)
            self.switched = self.status == 101
            self.client.idle.start()
            data = self.head[end + 4 :]
            client.write(head)
            if self.switched:
                # Backpressure both ways: a slow reader pauses the other side.
                client.registerProducer(self.transport, True)  # type: ignore[attr-defined]
                self.transport.registerProducer(client, True)  # type: ignore[attr-defined]
                client.resumeProducing()  # type: ignore[attr-defined]
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


@define
class Tunnel:
    """
    One WebSocket request: takes over the client's connection, connects to
    the upstream (retrying a connection that was refused, as for any
    request), sends the handshake and relays until either side closes or the
    tunnel is idle for C{idle_timeout} seconds.

    @ivar _error: builds the raw error response for a handshake that failed
        (its kind, the reason, the tries made).
    @ivar _closed: told, once the client's connection is closed, the status
        its client was sent (499 if none) and the tries made; not told after
        C{_error}.
    """

    log = Logger()

    _clock: IReactorTime
    _policy: RetryPolicy
    _endpoint: IStreamClientEndpoint
    _handshake: bytes
    _request_id: str
    _timeout: float
    _idle_timeout: float
    _error: Callable[[ErrorKind, str, int], bytes]
    _closed: Callable[[int, int], None]
    _client: ClientSide | None = None
    _transport: ITransport | None = None
    _tries: int = 0
    _failed: bool = False
    _pending: Deferred[object] | IDelayedCall | None = None
    _abort: IDelayedCall | None = None

    def start(self, request: Request) -> None:
        """
        Take over C{request}'s connection and start the first try.
        """
        self._client = ClientSide(IdleTimer(self._clock, self._idle_timeout, self._idle), self._client_lost)
        self._transport = take_over(request, self._client)
        self._attempt(1)

    def _fail(self, kind: ErrorKind, reason: str, tries: int) -> None:
        self._failed = True
        response = self._error(kind, reason, tries)
        if self._client is not None and not self._client.closed and self._transport is not None:
            self._transport.write(response)
            self._transport.loseConnection()

    def _connections(self) -> list[ITransport]:
        client = self._client
        found = [] if self._transport is None else [self._transport]
        if client is not None and client.peer is not None and client.peer.transport is not None:
            found.append(client.peer.transport)
        return found

    def _idle(self) -> None:
        self.log.info(
            "WebSocket tunnel {request_id} closed: no bytes either way for {timeout:g} s",
            request_id=self._request_id,
            timeout=self._idle_timeout,
        )
        for transport in self._connections():
            transport.loseConnection()
        self._abort = self._clock.callLater(ABORT_AFTER, self._abort_all)

    def _abort_all(self) -> None:
        for transport in self._connections():
            transport.abortConnection()  # type: ignore[attr-defined]

    def _client_lost(self) -> None:
        pending, self._pending = self._pending, None
        if isinstance(pending, Deferred) or (pending is not None and pending.active()):
            pending.cancel()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self._failed:
            return
        peer = None if self._client is None else self._client.peer
        self._closed(peer.status if peer is not None and peer.answered else 499, self._tries)

    def _attempt(self, tries: int) -> None:
        self._pending = None
        client = self._client
        if client is None or client.closed:
            return
        self._tries = tries
        side = UpstreamSide(
            client,
            self._handshake,
            self._request_id,
            self._clock,
            self._timeout,
            lambda kind, reason: self._fail(kind, reason, tries),
        )

        def failed(failure: Failure) -> None:
            side.cancel_timer()
            if client.closed:
                return
            classified = classify(failure)
            if classified is None:
                self._fail(INTERNAL, f"proxy bug: {failure.getErrorMessage()}", tries)
                return
            decision = self._policy.after_failure(b"GET", False, classified, tries)
            if decision.retry:
                self._pending = self._clock.callLater(decision.delay, self._attempt, tries + 1)
                return
            self._fail(classified.kind, classified.reason, tries)

        connecting: Deferred[object] = connectProtocol(self._endpoint, side)
        self._pending = connecting
        connecting.addCallbacks(self._connected, failed)

    def _connected(self, _: object) -> None:
        self._pending = None
