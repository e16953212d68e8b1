"""
Reading one upstream response with llhttp, Node.js's strict HTTP/1.1 parser,
through httptools' L{HttpResponseParser} callbacks.

Each response gets a L{ResponseReader} (the last one's, with its parser, when
llhttp ended that response cleanly on a kept-alive connection).  It finds the end of each head
(the first blank line: llhttp takes no bare LF, so no head ends earlier) and
feeds llhttp up to there alone, so that interim (1xx) answers are skipped, the
answer to a HEAD is framed as bodiless (llhttp cannot be told the method, as
httptools' issue #47 says), and the head is bounded before llhttp buffers it.
The body that follows is fed to the same parser.

Whatever llhttp rejects, and what it lets through that HTTP/1.1 forbids (a
reason phrase holding control bytes, a version other than 1.0 or 1.1, a
transfer coding other than C{chunked}), raises L{WireError}.

This module imports nothing of the package.
"""

from __future__ import annotations

import re
from typing import Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.web.iweb import UNKNOWN_LENGTH

#: The most bytes of status line and headers that one response may have.
MAX_HEAD = 64 * 1024
#: The most header fields one response head may have.
MAX_HEADERS = 100
#: Pieces of a Content-Length body this large skip llhttp.
DIRECT_READ = 16 * 1024
#: The most bytes of trailer fields accepted (they are read and dropped),
#: and of a chunked body's framing read without any progress.
MAX_TRAILERS = 16 * 1024

#: Response headers about the connection, kept apart from C{response.headers}
#: (as Twisted's client does).
CONNECTION_CONTROL = frozenset(
    b"content-length connection keep-alive te trailers transfer-encoding upgrade proxy-connection".split()
)

#: What a reason phrase may not hold: RFC 9112 allows HTAB, SP, VCHAR and obs-text.
_BAD_PHRASE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_USUAL_PHRASES = frozenset({b"OK", b"Created", b"No Content", b"Not Modified", b"Not Found", b""})
_NO_BODY = (204, 304)
_Fields = dict[bytes, tuple[bytes, list[bytes]]]


class WireError(Exception):
    """
    The upstream broke HTTP/1.1's syntax; the connection cannot be trusted.
    """


class _Stop(Exception):
    """
    Raised in a callback to stop llhttp: the response has ended (or was abandoned).
    """


class ResponseSink(Protocol):
    """
    Where a L{ResponseReader} hands what it reads.
    """

    def head_read(
        self, minor: int, code: int, phrase: bytes, fields: _Fields, control: _Fields, length: int | object
    ) -> None:
        """
        The final response's head: C{fields} end-to-end, C{control} about the connection.
        """

    def body_read(self, data: bytes) -> None:
        """
        Some of the body.
        """

    def body_ended(self, reusable: bool) -> None:
        """
        The response is complete; C{reusable}: the connection may carry another request.
        """


class ResponseReader:
    """
    Reads the response to one request.

    @ivar until_close: the body ends with the connection.
    @ivar seen: some bytes of the response arrived.
    """

    # fmt: off
    __slots__ = (
        "_chunked", "_code", "_complete", "_control", "_direct", "_ended", "_fields", "_head_bytes",
        "_head_done", "_head_request", "_held", "_in_body", "_keep_alive", "_minor", "_parsed_whole",
        "_parser", "_phrase", "_progress", "_raw", "_remaining", "_repeats", "_sink", "_stalled", "_start",
        "_tail", "_trailer_bytes", "_upgrade", "seen", "until_close",
    )
    # fmt: on

    def __init__(self, sink: ResponseSink, head_request: bool, upgrade: bool = False) -> None:
        """
        @param head_request: the response answers a HEAD: it has no body.
        @param upgrade: the request asked for an upgrade: a 101 is its final answer.
        """
        self._parser = HttpResponseParser(self)
        self._start_response(sink, head_request, upgrade)

    def next_reader(self, sink: ResponseSink, head_request: bool) -> ResponseReader:
        """
        The reader of the next response on the same connection: this one,
        with its parser, when llhttp ended the last response itself (a
        keep-alive parser reads the next message from a clean state); a
        fresh one otherwise (a HEAD's answer, whose body llhttp would still
        expect, or a response cut short).
        """
        if self._parsed_whole and not self._head_request and not head_request and self._sink is None:
            self._start_response(sink, head_request, False)
            return self
        return ResponseReader(sink, head_request)

    def _start_response(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        self._sink: ResponseSink | None = sink
        self._head_request = head_request
        self._upgrade = upgrade
        self._parsed_whole = self._direct = False
        self._tail = b""  # the last bytes of the head fed so far (its end may straddle pieces)
        self._head_bytes = 0
        self._start = b""  # the first 8 bytes of the head: HTTP/ and the version
        self._in_body = False
        self._raw = False  # llhttp stepped aside (an unasked upgrade): the rest is body
        self._chunked = False
        self._remaining: int | None = None
        self._stalled = 0
        self._progress = False
        self._trailer_bytes = 0
        self._held: list[bytes] | None = None  # body read before the head is handed over
        self._ended: bool | None = None  # the response ended while held (whether stray bytes followed)
        self.until_close = False
        self.seen = False
        self._code = 0
        self._minor = 1
        self._new_message()

    def _new_message(self) -> None:
        self._phrase = b""
        self._fields: _Fields = {}
        self._control: _Fields = {}
        self._repeats = 0  # fields whose name came before: a field is a name or a repeat
        self._head_done = False
        self._complete = False
        self._keep_alive = False

    def detach(self) -> None:
        """
        Stop handing anything over (the response was abandoned or failed).
        """
        self._sink = None

    def feed(self, data: bytes) -> None:
        """
        @raise WireError: the response is invalid.
        """
        self.seen = True
        if self._in_body:
            self._body(data)
        else:
            self._head(data)

    # The head
    def _head(self, data: bytes) -> None:
        while data:
            start = self._start  # llhttp also takes RTSP/ and ICE/, and skips CR and LF before them
            if len(start) < 8:
                if not start and data.startswith(b"HTTP/"):
                    self._start = data[:8]
                else:
                    start = self._start = start + data[: 8 - len(start)]
                    if not b"HTTP/".startswith(start[:5]):
                        raise WireError(f"the response does not start with HTTP/: {start[:5]!r}")
            tail = self._tail
            search = tail + data if tail else data
            end = search.find(b"\r\n\r\n")
            cut = len(data) if end < 0 else end + 4 - len(tail)
            self._head_bytes += cut
            if self._head_bytes > MAX_HEAD:
                raise WireError("the response's head is larger than 64 KiB")
            if end < 0:
                self._tail = search[-3:]
                self._feed_head(data)
                return
            piece, data = data[:cut], data[cut:]
            upgraded = self._feed_head(piece)
            if not self._head_done:
                raise WireError("the response's head does not end at its first blank line")
            final = self._code >= 200 or (self._code == 101 and self._upgrade)
            if upgraded and not final:
                raise WireError("an interim response asks for an upgrade")
            self._tail = b""
            self._start = b""
            self._head_bytes = 0
            if final:
                self._final(upgraded, data)
                return
            self._new_message()  # an interim (1xx) answer: the real one follows

    def _feed_head(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            return True  # llhttp skips the body of an answer with Connection: upgrade
        except HttpParserError as error:
            raise _invalid(error) from None
        return False

    def _final(self, upgraded: bool, rest: bytes) -> None:
        length = self._framing(upgraded)
        self._in_body = True
        # The body bytes that came with the head are read before the head is
        # handed over: an error in them is a 502, with nothing relayed.
        held: list[bytes] = []
        self._held = held
        if self._complete:
            self._ended = bool(rest)
        elif rest:
            self._body(rest)
        self._held = None
        sink = self._sink
        if sink is None:
            return
        sink.head_read(self._minor, self._code, self._phrase, self._fields, self._control, length)
        for piece in held:
            if self._sink is not None:
                self._sink.body_read(piece)
        if self._ended is not None:
            self._finish(self._ended)

    def _framing(self, upgraded: bool) -> int | object:
        control = self._control
        if upgraded:
            self._keep_alive = False
        if self._code == 204 and b"transfer-encoding" in control:  # RFC 9112 6.1: MUST NOT
            raise WireError("a 204 answer with Transfer-Encoding")
        if self._head_request or self._code in _NO_BODY:
            if b"content-length" in control:  # it describes the resource: end to end
                self._fields[b"content-length"] = control.pop(b"content-length")
            self._complete = True
            return 0
        length: int | object = UNKNOWN_LENGTH
        coding = control.get(b"transfer-encoding")
        lengths = control.get(b"content-length")
        if coding is not None:
            if b",".join(coding[1]).strip().lower() != b"chunked":
                raise WireError(f"unsupported Transfer-Encoding {b','.join(coding[1])[:80]!r}")
            self._chunked = True
        elif lengths is not None:
            length = self._remaining = int(lengths[1][0])
        else:
            self.until_close = True
            self._keep_alive = False
        if upgraded:
            self._raw = self.until_close
            self._complete = not self.until_close
        return length

    # The body
    def _body(self, data: bytes) -> None:
        if self._raw:
            self.on_body(data)
            return
        remaining = self._remaining
        stray = False
        if remaining is not None and len(data) > remaining:
            stray = True  # bytes past Content-Length: never parsed, never reused
            data = data[:remaining]
        if remaining is not None:
            self._remaining = remaining - len(data)
            if self._direct or len(data) >= DIRECT_READ:
                self._direct_body(data, stray)
                return
        self._progress = False
        try:
            self._parser.feed_data(data)
        except HttpParserError as error:
            if not self._complete:
                if isinstance(error.__context__, _Stop):
                    return  # abandoned
                raise _invalid(error) from None
            stray = True  # llhttp read past the end: more bytes followed
        if self._trailer_bytes > MAX_TRAILERS:
            raise WireError("the trailers are too large")
        if self._complete:
            self._finish(stray)
        elif self._chunked:
            self._stalled = 0 if self._progress else self._stalled + len(data)
            if self._stalled > MAX_TRAILERS:
                raise WireError("a chunk-size line or the trailers are too long")

    def _direct_body(self, data: bytes, stray: bool) -> None:
        # Large pieces of a Content-Length body go to the sink as read (llhttp
        # would only copy them); its parser, which lost count, is not reused.
        self._direct = True
        if self._sink is None and self._held is None:
            return  # abandoned
        self.on_body(data)
        if self._remaining == 0:
            self._complete = True
            self._finish(stray)

    def _finish(self, stray: bool) -> None:
        if self._held is not None:  # the head is not handed over yet
            self._ended = stray
            return
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.body_ended(self._keep_alive and not stray)

    # llhttp's callbacks
    def on_message_begin(self) -> None:
        if self._in_body:
            raise _Stop()  # a second message in the bytes of this one

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # a trailer field: counted, then dropped
            self._trailer_bytes += len(name) + len(value) + 4
            self._progress = True
            return
        # Sorted as read (one pass, no list of lines kept for later).
        lower = name.lower()
        target = self._control if lower in CONNECTION_CONTROL else self._fields
        value = value.rstrip(b" \t")
        if lower in target:
            target[lower][1].append(value)
            self._repeats += 1
        else:
            target[lower] = (name, [value])

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._head_done = True
        if len(self._fields) + len(self._control) + self._repeats > MAX_HEADERS:
            raise WireError(f"the response has more than {MAX_HEADERS} header fields")
        self._code = code = parser.get_status_code()
        # llhttp read "HTTP/" and one digit, a dot and one digit: the version
        # as sent, without formatting llhttp's numbers into a string.
        version = self._start[5:]
        if version not in (b"1.1", b"1.0"):
            raise WireError(f"unsupported HTTP version {version.decode('latin-1')}")
        if code < 100:
            raise WireError(f"bad status code {code}")
        if code == 101 and not self._upgrade:
            raise WireError("101 Switching Protocols to a request that asked for no upgrade")
        if self._phrase not in _USUAL_PHRASES and _BAD_PHRASE.search(self._phrase):
            raise WireError(f"a control byte in the reason phrase {self._phrase[:80]!r}")
        self._minor = 1 if version == b"1.1" else 0
        self._keep_alive = parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self._progress = True
        if self._held is not None:
            self._held.append(data)
            return
        sink = self._sink
        if sink is None:
            raise _Stop()
        sink.body_read(data)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        if self._code >= 200:
            self._complete = True
            self._parsed_whole = not self._raw


def _invalid(error: HttpParserError) -> WireError:
    cause = error.__context__
    if isinstance(cause, WireError):
        return cause
    if cause is not None:
        raise cause  # a bug in what reads the body, not the upstream's fault
    return WireError(f"invalid response: {error}")
