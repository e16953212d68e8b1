"""
A refused request head: what was wrong with it, in words a client can act on
(L{request_line_problem}, L{header_problem}), and who is told of it
(L{RefusalListener}, given a L{Refusal} for each head the server side refuses
before any resource sees it: 400, 408, 413, 414, 431).

The words follow RFC 9112 sections 3 and 5 and RFC 9110 section 5.5: they
explain a refusal llhttp or the channel decided (L{head_problem} finds the
line at fault), and never decide one.
"""

from __future__ import annotations

import re
from typing import Protocol

from attrs import frozen

#: RFC 9110 section 5.6.2: a token (a method, a header name).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: The longest request target a L{Refusal} keeps (a 414's is longer).
MAX_LOGGED_TARGET = 1024

_FRAMING = (b"content-length", b"transfer-encoding")
_MALFORMED = "A header line is malformed."
#: What llhttp says, in words a client can act on.
_LLHTTP_SAYS = {"Content-Length overflow": "Content-Length does not fit in 64 bits."}

#: A request line HTTP/1.1 takes: method, target and version, single spaces.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]")
#: A header line HTTP/1.1 takes (its value's framing words aside).
_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*")


@frozen
class Refusal:
    """
    A request refused by the server side before any resource saw it.

    @ivar status: the status sent.
    @ivar error_type: the error's C{details.errorType}.
    @ivar method: the request's method as far as it was read (C{-} if not).
    @ivar target: its target as far as it was read (C{-} if not), at most
        L{MAX_LOGGED_TARGET} characters; raw, not escaped.
    @ivar request_id: the C{requestId} of the error sent.
    @ivar seconds: from the head's first byte (as far as timed) to the refusal.
    @ivar message: the error's message.
    @ivar protocol: the client's protocol (C{HTTP/1.1}, C{HTTP/2.0}).
    """

    status: int
    error_type: str
    method: str
    target: str
    request_id: str
    seconds: float
    message: str
    protocol: str = "HTTP/1.1"


class RefusalListener(Protocol):
    """
    Told of every request the server side refuses (the access log and the
    metrics, handed in by whoever builds the site).
    """

    def request_refused(self, refusal: Refusal) -> None:
        """
        C{refusal} was answered, and its connection is closing.
        """


def known_request(line: bytes) -> tuple[str, str]:
    """
    @return: the method and target of a request line as far as they can be
        read (C{-} for a part that cannot), the target cut at
        L{MAX_LOGGED_TARGET} characters.
    """
    parts = line.split(b" ", 2)
    method = parts[0].decode("latin-1") if _TOKEN.fullmatch(parts[0]) else "-"
    target = parts[1].decode("latin-1")[:MAX_LOGGED_TARGET] if len(parts) > 1 and parts[1] else "-"
    return method, target


def request_line_problem(line: bytes) -> str:
    """
    @return: why Twisted refused C{line} as a request line.
    """
    if not line:
        return (
            "The request starts with an empty line; it must start with its request line (GET /path HTTP/1.1)."
        )
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return "The request line must be a method, a target and a version, separated by single spaces."
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return "The request method holds a character a method cannot hold."
    if any(byte <= 32 or byte > 176 for byte in target):
        return "The request target holds a control character, a space or a non-ASCII byte; percent-encode it."
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return "The HTTP version must be HTTP/1.1 or HTTP/1.0."
    return "The request line is malformed."


def header_problem(line: bytes, framed: bool) -> str:
    """
    @param line: the header line (a folded one joined) Twisted refused.
    @param framed: whether an earlier C{Content-Length} or
        C{Transfer-Encoding: chunked} chose the body's framing.
    @return: why Twisted refused C{line}.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        return "A header line has no colon."
    if not _TOKEN.fullmatch(name):
        return "A header name holds a space or a character a name cannot hold (no space before the colon)."
    shown = name.decode("ascii")[:64]
    value = value.strip(b" \t")
    for byte, said in ((b"\x00", "a NUL"), (b"\r", "a bare CR"), (b"\n", "a bare LF")):
        if byte in value:
            return f"The {shown} header's value holds {said} byte."
    if not _FIELD.fullmatch(line):
        return f"The {shown} header's value holds a control byte."
    lowered = name.lower()
    if lowered == b"content-length" and not value.isdigit():
        return "Content-Length must be decimal digits only."
    if lowered == b"transfer-encoding" and value.lower() != b"chunked":
        return "The only transfer coding a request may use is chunked."
    if lowered in _FRAMING and framed:
        return "A request carries one Content-Length or one Transfer-Encoding: chunked, not two, not both."
    return _MALFORMED


def early_problem(start: bytes) -> str | None:
    """
    @param start: the start of a request head that has not ended yet.
    @return: why it can never be a request (a TLS handshake, a complete
        request line that is not HTTP/1.x: HTTP/0.9's has no version), to
        answer at once rather than at the header timeout; or L{None}.
    """
    if start.startswith(b"\x16\x03"):
        return head_problem(start, "")
    line, crlf, _ = start.partition(b"\r\n")
    if crlf and line and not _REQUEST_LINE.fullmatch(line):
        return head_problem(start, "")
    return None


def head_problem(head: bytes, reason: str) -> str:
    """
    @param head: a request head refused, up to its blank line.
    @param reason: what the parser said (the last resort).
    @return: why C{head} was refused: what is wrong with its first faulty line.
    """
    if head.startswith(b"\x16\x03"):
        return "This is a TLS handshake sent to a plain HTTP port: use http://, not https://."
    lines = head.split(b"\r\n")
    line = lines[0]
    if not _REQUEST_LINE.fullmatch(line):
        if b"\n" in line:
            return "A request head line ends in a bare LF; lines end in CRLF."
        return request_line_problem(line)
    framed = False
    for line in lines[1:]:
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            return "A header line starts with a space or tab (obsolete line folding); send each on one line."
        if not _FIELD.fullmatch(line):
            return header_problem(line, framed)
        if line.partition(b":")[0].lower() in _FRAMING:
            if framed or header_problem(line, False) != _MALFORMED:
                return header_problem(line, framed)
            framed = True
    if "method" in reason:  # llhttp knows the methods of HTTP and WebDAV, not any token
        return "The request method is not an HTTP method (methods are upper case: GET, POST...)."
    return _LLHTTP_SAYS.get(reason) or f"The request head is malformed: {reason}."
