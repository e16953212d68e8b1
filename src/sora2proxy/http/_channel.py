"""
L{ProxyChannel}: the HTTP/1.1 server connection.  Request heads are read by
llhttp (L{_head}); the channel frames bodies (C{Content-Length}, or chunked
with L{StrictChunkedDecoder}), answers pipelined requests in order, and
drives twisted.web's L{Request} objects as C{HTTPChannel} does (C{gotLength},
C{handleContentChunk}, C{requestReceived}, C{requestDone}), so any resource
works behind it.

It enforces the limits a front door needs: request line length (414), header count and size
(431), and the time a client may take to send its head (408, against slowloris; the timer runs
only while a head is incomplete).  A head is refused with 400 at once when llhttp refuses it
(ambiguous framing, obs-fold, bare CR, control bytes...), when its lines end in a bare LF, when
C{Host} is missing (HTTP/1.1), repeated or not a host and port, when a chunk size does not fit
in 64 bits, and for what llhttp lets through (L{_head}).

Every refusal is one JSON error saying what is wrong (L{_refusal}), the connection then closed
(aborted later if a TLS client never answers), and the site's L{RefusalListener} told.
"""

from __future__ import annotations

from itertools import chain, repeat
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel, _IdentityTransferDecoder, _MalformedChunkedDataError
from twisted.web.http_headers import Headers

from .._errors import BAD_REQUEST, ErrorKind, raw_error
from ._chunked import StrictChunkedDecoder
from ._eager import send_now
from ._head import MAX_HEADERS, Head, HeadReader, HeadRefused
from ._headers import new_request_id
from ._idle import IdleTimer
from ._reading import PauseTracking
from ._refusal import MAX_LOGGED_TARGET, Refusal, RefusalListener, early_problem, known_request

URI_TOO_LONG = ErrorKind("URI_TOO_LONG", 414, "Request line too long")
HEADERS_TOO_LARGE = ErrorKind("HEADERS_TOO_LARGE", 431, "Request headers too large")
HEADER_TIMEOUT = ErrorKind("HEADER_TIMEOUT", 408, "Request headers too slow")

#: Longest request line (method, target, version).
MAX_REQUEST_LINE = 8192
#: Longest header line.
MAX_HEADER_LINE = 16384
#: Most bytes of request line plus headers.
MAX_HEAD_BYTES = 32768

_TOO_LARGE = f"The request has more than {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes of them."
_TOO_LONG = f"The request line is longer than {MAX_REQUEST_LINE} bytes."


class ProxyChannel(IdleTimer, HTTPChannel):
    """
    An C{HTTPChannel} whose requests are read by llhttp, with the proxy's
    request-head limits.

    Every head it refuses gets exactly one response, the proxy's JSON error,
    and its connection closes.

    @ivar header_timeout: seconds from a request's first byte to the end of
        its headers (0 disables).
    @ivar on_refused: told of each refused request (or L{None}).
    """

    header_timeout = 10.0
    allow_underscore_headers = False
    on_refused: RefusalListener | None = None

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._reader: HeadReader | None = None
        self._buffer = b""  # read, not parsed yet (a head, a body, the next request)
        self._body: Any = None  # the decoder of the body being read
        self._blank_seen = False  # one empty line may come before a request line
        self._busy = False
        self._head_timer: IDelayedCall | None = None
        self._refused = False
        self._held = b""
        self._host: Any = None
        self._peer: Any = None
        self._request_line: tuple[bytes, bytes] | None = None
        self._secure: bool | None = None

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self._refused:
            return
        if self._handlingRequest:  # read on once the request in hand is answered
            self._dataBuffer.append(data)
            held = sum(map(len, self._dataBuffer))
            if not self._waitingForTransport and held > self._optimisticEagerReadSize:
                self._networkProducer.pauseProducing()
            return
        self._buffer = self._buffer + data if self._buffer else data
        self._read()

    def _read(self) -> None:
        if self._busy:  # a request answered while its head was read: the loop below goes on
            return
        self._busy = True
        try:
            while self._buffer and not (self._handlingRequest or self._refused or self.transport is None):
                if self._body is not None:
                    data, self._buffer = self._buffer, b""
                    self._read_body(data)
                elif not self._read_head():
                    break
        finally:
            self._busy = False
        # The timer runs only while a request head is incomplete: a head that
        # arrives whole (the common case) never costs a DelayedCall.
        if self._buffer and self._head_timer is None and self.header_timeout and self._body is None:
            self._start_timer()

    def _start_timer(self) -> None:
        clock = getattr(getattr(self, "site", None), "reactor", None)
        if clock is not None and not (self._handlingRequest or self._refused):
            self._head_timer = clock.callLater(self.header_timeout, self._too_slow)

    def _read_head(self) -> bool:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":  # an empty line before the request line, once
            if self._blank_seen:
                line = buffer[2:].split(b"\r\n", 1)[0]
                self._refuse(BAD_REQUEST, "The request starts with an empty line; it must start "
                             "with its request line (GET /path HTTP/1.1).", line)  # fmt: skip
                return False
            self._blank_seen = True
            buffer = self._buffer = buffer[2:]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._incomplete(buffer)
            return False
        if end > MAX_REQUEST_LINE and not self._within_limits(buffer, end + 2):
            return False
        end += 4
        if end == len(buffer):  # the common case: the head and nothing more
            head, self._buffer = buffer, b""
        else:
            head, self._buffer = buffer[:end], buffer[end:]
        if self._reader is None:
            self._reader = HeadReader(self.allow_underscore_headers)
        try:
            parsed = self._reader.read(head)
        except HeadRefused as refused:
            kind = HEADERS_TOO_LARGE if refused.status == 431 else BAD_REQUEST
            self._refuse(kind, refused.message, head[: head.find(b"\r\n")])
            return False
        if self._head_timer is not None:
            self._cancel_timer()
        self._blank_seen = False
        self._start(parsed)
        return True

    def _incomplete(self, buffer: bytes) -> None:
        early = early_problem(buffer)
        if b"\n" in buffer and buffer.count(b"\n") != buffer.count(b"\r\n"):
            self._refuse(BAD_REQUEST, "A request head line ends in a bare LF; lines end in CRLF.")
        elif early is not None:
            self._refuse(BAD_REQUEST, early)
        elif buffer.count(b"\r\n") > MAX_HEADERS + 1:
            self._refuse(HEADERS_TOO_LARGE, _TOO_LARGE)
        else:
            self._within_limits(buffer, len(buffer))

    def _within_limits(self, buffer: bytes, end: int) -> bool:
        """
        Refuse a head (complete or not, C{end} bytes of lines) over the limits.
        """
        first = buffer.find(b"\r\n", 0, end)
        if first > MAX_REQUEST_LINE or (first < 0 and end > MAX_REQUEST_LINE):
            self._refuse(URI_TOO_LONG, _TOO_LONG, buffer[: MAX_REQUEST_LINE + 1])
        elif end > MAX_HEAD_BYTES:
            self._refuse(HEADERS_TOO_LARGE, _TOO_LARGE)
        elif end > MAX_HEADER_LINE and max(map(len, buffer[:end].split(b"\r\n"))) > MAX_HEADER_LINE:
            self._refuse(HEADERS_TOO_LARGE, "A request header line is too long.")
        return not self._refused

    def _start(self, head: Head) -> None:
        """
        Build the request for C{head} and read its body, as
        C{HTTPChannel.allHeadersReceived} does.
        """
        request = self.requestFactory(self, len(self.requests))
        fields = request.requestHeaders._rawHeaders = head.headers  # built at once, already checked
        self.requests.append(request)
        self._request_line = (head.method, head.target)
        if b"Cookie" in fields:
            request.parseCookies()
        if head.version == b"HTTP/1.1" and b"Connection" not in fields:  # the common case, at once
            self.persistent = True
        else:
            self.persistent = self.checkPersistence(request, head.version)
        request.gotLength(head.length)
        if self._refused:  # the request refused its body (--max-body)
            return
        expect = fields.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and head.version == b"HTTP/1.1":
            self._send100Continue()  # type: ignore[no-untyped-call]
        if head.length == 0:
            self._received(request, head)
            return
        done = lambda rest: self._body_read(request, head, rest)  # noqa: E731
        if head.length is None:
            self._body = StrictChunkedDecoder(request.handleContentChunk, done)
        else:
            self._body = _IdentityTransferDecoder(head.length, request.handleContentChunk, done)

    def _read_body(self, data: bytes) -> None:
        decoder = self._body
        try:
            decoder.dataReceived(data)
        except _MalformedChunkedDataError:
            problem = getattr(decoder, "problem", None) or "bad framing"
            self._refuse(BAD_REQUEST, f"The chunked request body is malformed: {problem}")

    def _body_read(self, request: Any, head: Head, rest: bytes) -> None:
        self._body = None
        self._buffer = rest + self._buffer if self._buffer else rest
        self._received(request, head)

    def _received(self, request: Any, head: Head) -> None:
        # The idle timer keeps running (no DelayedCall cancelled and made
        # again per request): it is ignored while a request is handled.
        self._handlingRequest = True
        self._request_line = None
        request.requestReceived(head.method, head.target, head.version)

    def requestDone(self, request: Any) -> None:
        if self._held:
            self.write(b"")
        if request is not self.requests[0]:
            raise TypeError(request)
        del self.requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self.timeOut:  # idle from the answer on: the running timer moved, or a new one
            self.setTimeout(self.timeOut)
        if self._dataBuffer:
            self._buffer += b"".join(self._dataBuffer)
            self._dataBuffer = []
        if self._buffer:  # pipelined requests, read while this one was handled
            self._read()

    def take_early(self) -> bytes:
        """
        Stop reading requests (the connection is handed over); the bytes read, not parsed.
        """
        early = self._buffer + b"".join(self._dataBuffer)
        self._buffer = b""
        self._dataBuffer = []
        self._refused = True
        self._cancel_timer()
        return early

    def getHost(self) -> Any:
        # Each request asks; the addresses of a connection never change
        # (Twisted's TCP transport builds a new one every time).
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()  # type: ignore[no-untyped-call]
        return self._peer

    def isSecure(self) -> bool:
        # Asked several times a request; HTTPChannel adapts the transport to
        # ISSLTransport through zope every time, and the answer cannot
        # change for a connection.
        secure = self._secure
        if secure is None:
            secure = super().isSecure()  # type: ignore[no-untyped-call]
            if self.transport is not None:
                self._secure = secure
        return bool(secure)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # RFC 9110 section 7.6.1: Connection is a list of tokens, in any case,
        # over any number of fields (Twisted splits the first on spaces only).
        fields = request.requestHeaders._rawHeaders.get(b"Connection")
        if version != b"HTTP/1.1":
            return False
        if fields and any(token.strip(b" \t").lower() == b"close" for f in fields for token in f.split(b",")):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return True

    def timeoutConnection(self) -> None:
        if not self._handlingRequest:  # a connection is idle only between requests
            super().timeoutConnection()  # type: ignore[no-untyped-call]

    def _cancel_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _too_slow(self) -> None:
        self._refuse(HEADER_TIMEOUT, f"The request headers did not arrive within {self.header_timeout:g} s.")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Called by twisted.web's Request for a body it cannot parse.
        self._refuse(BAD_REQUEST, "The request is malformed.")

    def _refuse(self, kind: ErrorKind, message: str, line: bytes | None = None) -> None:
        if self._refused:
            return
        seconds = self._head_seconds()
        self._refused = True
        self._cancel_timer()
        request_id = new_request_id()
        details = {
            "attempts": 0,
            "durationMs": round(seconds * 1000),
            "requestId": request_id,
            "suggestion": message,
        }
        if self.transport is not None:
            date = getattr(getattr(self, "site", None), "date", None)
            self.transport.write(raw_error(kind, message, details, request_id, date and date.now()))
            self.transport.loseConnection()
            self._abort_later()
        self.tell_refused(kind, message, request_id, seconds, line)

    def tell_refused(
        self, kind: ErrorKind, message: str, request_id: str, seconds: float = 0.0, line: bytes | None = None
    ) -> None:
        """
        Tell L{on_refused} that the request being read was refused with
        C{kind} (by this channel, or by its request: a body too large); read
        nothing more.

        @param line: the request line, for a request refused before its head was read.
        """
        self._refused = True
        self.setTimeout(None)  # closing already: no idle timer
        if self.on_refused is not None:
            method, target = self._request_so_far(line)
            refusal = Refusal(kind.status, kind.error_type, method, target, request_id, seconds, message)
            self.on_refused.request_refused(refusal)

    def _head_seconds(self) -> float:
        # From the first incomplete read of the head, as its timer knows;
        # a head refused as it arrives took no time.
        timer, clock = self._head_timer, getattr(getattr(self, "site", None), "reactor", None)
        if timer is None or clock is None or not self.header_timeout:
            return 0.0
        started = timer.getTime() - self.header_timeout
        return max(0.0, float(clock.seconds()) - started)

    def _request_so_far(self, line: bytes | None) -> tuple[str, str]:
        if line is None and self._request_line is not None:
            method, target = self._request_line  # refused once its head was read
            return method.decode("latin-1"), target.decode("latin-1")[:MAX_LOGGED_TARGET]
        if line is None:  # the request line as far as it arrived
            line = self._buffer.split(b"\n", 1)[0].split(b"\r", 1)[0]
        return known_request(line)

    # Writing the response: its head is held until the first body bytes (or
    # the request's end), and both go to the socket at once (send_now).
    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        # What HTTPChannel.writeHeaders writes, its loops run in C: each
        # value of each field is one (name, value) pair of its own line.
        raw = headers._rawHeaders
        fields = chain.from_iterable(map(zip, map(repeat, raw), raw.values()))
        lines = chain((b" ".join((version, code, reason)),), map(b": ".join, fields))
        if self._held:  # a head not sent yet (never, from twisted.web's Request)
            self.write(b"")
        self._held = b"\r\n".join(lines) + b"\r\n\r\n"

    def write(self, data: bytes) -> None:
        held, self._held = self._held, b""
        send_now(self.transport, held + data if held else data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        super().loseConnection()  # type: ignore[no-untyped-call]
        self._abort_later()

    def _abort_later(self) -> None:
        # TLS waits for the client's close_notify: aborted after abortTimeout, as twisted.web's timeout.
        clock = getattr(getattr(self, "site", None), "reactor", None)
        if self._abortingCall is None and self.abortTimeout and clock is not None and self.isSecure():
            self._abortingCall = clock.callLater(self.abortTimeout, self.forceAbortClient)

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._networkProducer = PauseTracking(self._networkProducer)  # no resume after each answer

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
