"""
L{ProxyChannel}: the HTTP/1.1 server connection, with the limits a front
door needs: request line length (414), header count and size (431), and the
time a client may take to send its headers (408, against slowloris).  Twisted
(24.7 and later) itself refuses ambiguous framing (C{Content-Length} with
C{Transfer-Encoding}, repeated or invalid C{Content-Length}) with 400 and
answers pipelined requests in order.

On top of Twisted's parsing (which refuses a bare CR or LF inside a line), a
head is refused with 400 at once (never left to the header timeout) when its
lines end in a bare LF, when C{Host} is missing (HTTP/1.1), repeated or not a
host and port (RFC 9112 section 3.2), and when a chunk size does not fit in
64 bits; request headers whose names hold C{_} are dropped, as nginx does
(C{underscores_in_headers off}), unless C{allow_underscore_headers}.

Every refusal, Twisted's own 400s included, is one JSON error saying what is
wrong (L{_refusal}), the connection then closed, and the site's
L{RefusalListener} told.  C{Connection: close} is honoured anywhere in the
field's token list.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder, _MalformedChunkedDataError
from twisted.web.http_headers import Headers

from .._errors import BAD_REQUEST, ErrorKind, raw_error
from ._eager import send_now
from ._headers import new_request_id, valid_host
from ._refusal import (
    MAX_LOGGED_TARGET,
    Refusal,
    RefusalListener,
    header_problem,
    known_request,
    request_line_problem,
)

URI_TOO_LONG = ErrorKind("URI_TOO_LONG", 414, "Request line too long")
HEADERS_TOO_LARGE = ErrorKind("HEADERS_TOO_LARGE", 431, "Request headers too large")
HEADER_TIMEOUT = ErrorKind("HEADER_TIMEOUT", 408, "Request headers too slow")

#: Longest request line (method, target, version).
MAX_REQUEST_LINE = 8192
#: Most header lines in one request.
MAX_HEADERS = 100
#: Most bytes of request line plus headers.
MAX_HEAD_BYTES = 32768
#: Most significant hex digits of a chunk size (a size that fits in 64 bits).
MAX_CHUNK_DIGITS = 16


class StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, refusing a chunk size that does not fit in 64
    bits (RFC 9112 section 7.1: recipients guard against overflow), which
    Twisted would otherwise wait on for ever.

    @ivar problem: why the body was refused (or L{None}).
    """

    problem: str | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except _MalformedChunkedDataError as malformed:
            self.problem = str(malformed)
            raise

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        end = self._buffer.find(b"\r\n", self._start)
        line = self._buffer if end < 0 else self._buffer[:end]
        size = line.split(b";", 1)[0]
        if len(size.lstrip(b"0")) > MAX_CHUNK_DIGITS:
            raise _MalformedChunkedDataError("Chunk size does not fit in 64 bits.")
        return super()._dataReceived_CHUNK_LENGTH()


class ProxyChannel(HTTPChannel):
    """
    An C{HTTPChannel} that enforces the proxy's request-head limits.

    Every head it refuses gets exactly one response, the proxy's JSON error
    (Twisted's own bare 400 included), and its connection closes.

    @ivar header_timeout: seconds from a request's first byte to the end of
        its headers (0 disables).
    @ivar on_refused: told of each refused request (or L{None}).
    """

    header_timeout = 10.0
    allow_underscore_headers = False
    on_refused: RefusalListener | None = None
    totalHeadersSize = MAX_HEAD_BYTES + 1024  # Twisted's own check stays a backstop
    maxHeaders = MAX_HEADERS + 10

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._head_lines = 0
        self._head_bytes = 0
        self._head_timer: IDelayedCall | None = None
        self._refused = False
        self._held = b""
        self._host: Any = None
        self._line = b""  # the head line being read, and the header line
        self._header = b""  # being checked: what a 400 explains

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if self.line_mode and b"\n" in getattr(self, "_buffer", b"") and not self._refused:
            self._refuse(BAD_REQUEST, "A request head line ends in a bare LF; lines end in CRLF.")
            return
        # The timer runs only while a request head is incomplete: a head that
        # arrives whole (the common case) never costs a DelayedCall.
        if self._head_timer is None and self.header_timeout and self._head_pending() and not self._refused:
            clock = getattr(getattr(self, "site", None), "reactor", None)
            if clock is not None:
                self._head_timer = clock.callLater(self.header_timeout, self._too_slow)

    def _head_pending(self) -> bool:
        return bool(self.line_mode and (self._head_lines or getattr(self, "_buffer", b"")))

    def getHost(self) -> Any:
        # Each request asks; the local address of a connection never changes
        # (Twisted's TCP transport asks the kernel every time).
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]
        return self._host

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        first = self._head_lines == 0
        if first and not line:  # an empty line before the request line: Twisted skips one
            self._line = line
            super().lineReceived(line)  # type: ignore[no-untyped-call]
            return
        self._head_lines += 1
        self._head_bytes += len(line) + 2
        if first and len(line) > MAX_REQUEST_LINE:
            self._refuse(URI_TOO_LONG, f"The request line is longer than {MAX_REQUEST_LINE} bytes.", line)
            return
        if self._head_lines > MAX_HEADERS + 1 or self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                HEADERS_TOO_LARGE,
                f"The request has more than {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes of them.",
            )
            return
        self._line = line
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self._refuse(URI_TOO_LONG, f"The request line is longer than {MAX_REQUEST_LINE} bytes.", line)
        else:
            self._refuse(HEADERS_TOO_LARGE, "A request header line is too long.")

    def allHeadersReceived(self) -> None:
        self._head_lines = 0
        self._head_bytes = 0
        self._cancel_timer()
        headers = self.requests[-1].requestHeaders
        problem = _host_problem(headers.getRawHeaders(b"host"), getattr(self, "_version", b""))
        if problem is not None:
            self._refuse(BAD_REQUEST, problem)
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def headerReceived(self, line: bytes) -> bool:
        self._header = line
        if b"_" in line and not self.allow_underscore_headers:
            name, colon, _ = line.partition(b":")
            if colon and b"_" in name:
                return True  # dropped, as nginx does: CGI and WSGI read X_A as X-A
        ok: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        return ok

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()  # type: ignore[no-untyped-call]

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        chosen: bool = super()._maybeChooseTransferDecoder(header, data)  # type: ignore[no-untyped-call]
        decoder = self._transferDecoder
        if type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = StrictChunkedDecoder(decoder.dataCallback, decoder.finishCallback)
        return chosen

    def _cancel_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _too_slow(self) -> None:
        self._refuse(HEADER_TIMEOUT, f"The request headers did not arrive within {self.header_timeout:g} s.")

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # RFC 9110 section 7.6.1: Connection is a list of tokens, in any case,
        # over any number of fields (Twisted splits the first on spaces only).
        fields = request.requestHeaders.getRawHeaders(b"connection") or ()
        if version == b"HTTP/1.1" and any(
            token.strip(b" \t").lower() == b"close" for field in fields for token in field.split(b",")
        ):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        persistent: bool = super().checkPersistence(request, version)  # type: ignore[no-untyped-call]
        return persistent

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Where every 400 Twisted's parser decides is sent: the proxy's JSON
        # error instead of a bare one, saying what is wrong, once.
        line = None if hasattr(self, "_command") else self._line
        self._refuse(BAD_REQUEST, self._bad_request_problem(), line)

    def _bad_request_problem(self) -> str:
        decoder = self._transferDecoder
        if not self.line_mode:
            problem = getattr(decoder, "problem", None)
            return f"The chunked request body is malformed: {problem or 'bad framing'}"
        if not hasattr(self, "_command"):
            return request_line_problem(self._line)
        return header_problem(self._header, decoder is not None)

    def _refuse(self, kind: ErrorKind, message: str, line: bytes | None = None) -> None:
        if self._refused:
            return
        self._refused = True
        seconds = self._head_seconds()
        self._cancel_timer()
        request_id = new_request_id()
        details = {
            "attempts": 0,
            "durationMs": round(seconds * 1000),
            "requestId": request_id,
            "suggestion": message,
        }
        if self.transport is not None:
            self.transport.write(raw_error(kind, message, details, request_id))
            self.transport.loseConnection()
        self.tell_refused(kind, message, request_id, seconds, line)

    def tell_refused(
        self, kind: ErrorKind, message: str, request_id: str, seconds: float = 0.0, line: bytes | None = None
    ) -> None:
        """
        Tell L{on_refused} that the request being read was refused with
        C{kind} (by this channel, or by its request: a body too large).

        @param line: the request line, when the request was refused before
            Twisted read it.
        """
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
        command = getattr(self, "_command", None)
        if command is not None:
            return command.decode("latin-1"), self._path.decode("latin-1")[:MAX_LOGGED_TARGET]
        if line is None:  # the request line as far as it arrived
            line = self._buffer.split(b"\n", 1)[0].split(b"\r", 1)[0]
        return known_request(line)

    # Writing the response: its head is held until the first body bytes (or
    # the request's end), and both go to the socket at once (send_now).
    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self._flush_held()
        self._held = b"".join(head)

    def write(self, data: bytes) -> None:
        held, self._held = self._held, b""
        send_now(self.transport, held + data if held else data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def requestDone(self, request: Any) -> None:
        self._flush_held()
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def _flush_held(self) -> None:
        if self._held:
            self.write(b"")

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


def _host_problem(hosts: list[bytes] | None, version: bytes) -> str | None:
    """
    @return: why a request's C{Host} headers are refused (RFC 9112 section
        3.2), or L{None}.
    """
    if not hosts:
        if version == b"HTTP/1.1":
            return "An HTTP/1.1 request must carry a Host header."
        return None
    if len(hosts) > 1:
        return "The request carries more than one Host header."
    if not valid_host(hosts[0]):
        return "The Host header must be a host name or address and an optional port, nothing else."
    return None
