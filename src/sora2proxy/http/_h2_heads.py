"""
What an HTTP/2 request head may not carry, and how a request on an HTTP/2
stream is answered without a connection of its own to close.

L{head_problem} applies the rules of RFC 9113 section 8.2.2
(connection-specific fields, C{TE} other than C{trailers}), the rest of
hyper-h2's own header validation, and the head limits and C{Host} rules the
HTTP/1.1 channel applies (100 fields, 32 KiB, a valid C{:authority}); fields
whose names hold C{_} are left out when the request is forwarded, as for
HTTP/1.1.  L{abort_client} cuts a client's answer short on
either protocol: the connection for HTTP/1.1, the stream (C{RST_STREAM}) for
HTTP/2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from twisted.web.server import Request

from .._errors import BAD_REQUEST, BODY_TOO_LARGE, ErrorKind, body_too_large_message
from ._channel import HEADERS_TOO_LARGE, MAX_HEAD_BYTES
from ._head import MAX_HEADERS
from ._headers import valid_host
from ._refusal import MAX_LOGGED_TARGET, Refusal

#: RFC 9113 section 8.2.2: fields an HTTP/2 message must not carry.
CONNECTION_SPECIFIC = (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")

#: What the ALPN token C{h2} and C{Request.clientproto} (C{HTTP/2}) are
#: called in the access log, as nginx writes C{$server_protocol}.
HTTP2 = "HTTP/2.0"

_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)

Header = tuple[bytes, bytes]


@frozen
class HeadProblem:
    """
    Why an HTTP/2 request head is refused.

    @ivar kind: the error answered.
    @ivar message: what is wrong, in words.
    """

    kind: ErrorKind
    message: str


def head_problem(headers: Sequence[Header], max_body: int) -> HeadProblem | None:
    """
    @param headers: the request's fields as hyper-h2 decoded them (names in
        lower case, pseudo-fields first).
    @return: why the request is refused, or L{None}.
    """
    for name, value in headers:
        if name == b"upgrade":
            return HeadProblem(
                BAD_REQUEST,
                "An HTTP/2 request cannot ask for an Upgrade: WebSocket goes through this proxy "
                "over HTTP/1.1 only (no RFC 8441); connect with HTTP/1.1.",
            )
        if name in CONNECTION_SPECIFIC:
            shown = name.decode("ascii").title()
            return HeadProblem(
                BAD_REQUEST,
                f"An HTTP/2 request must not carry the connection-specific field {shown} "
                "(RFC 9113 section 8.2.2).",
            )
        if name == b"te" and value.strip().lower() != b"trailers":
            return HeadProblem(
                BAD_REQUEST, 'An HTTP/2 request may carry TE only as "trailers" (RFC 9113 section 8.2.2).'
            )
    try:
        list(validate_headers(headers, _REQUEST))
    except ProtocolError as e:
        return HeadProblem(BAD_REQUEST, f"The HTTP/2 request head is malformed: {e}")
    return _limits(headers) or _authority(headers) or _length(headers, max_body)


def _limits(headers: Sequence[Header]) -> HeadProblem | None:
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if len(headers) > MAX_HEADERS + 4 or size > MAX_HEAD_BYTES:
        message = f"The request has more than {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes of them."
        return HeadProblem(HEADERS_TOO_LARGE, message)
    return None


def _authority(headers: Sequence[Header]) -> HeadProblem | None:
    hosts = [value for name, value in headers if name in (b":authority", b"host")]
    if len(set(hosts)) > 1:
        return HeadProblem(BAD_REQUEST, "The request's :authority and Host name different hosts.")
    if hosts and not valid_host(hosts[0]):
        return HeadProblem(
            BAD_REQUEST, "The :authority must be a host name or address and an optional port, nothing else."
        )
    return None


def _length(headers: Sequence[Header], max_body: int) -> HeadProblem | None:
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > max_body:
            return HeadProblem(BODY_TOO_LARGE, body_too_large_message(max_body))
    return None


def error_body(kind: ErrorKind, message: str, details: Mapping[str, Any]) -> bytes:
    """
    @return: the proxy's JSON error body (as L{raw_error<sora2proxy._errors.raw_error>} writes it).
    """
    return json.dumps(
        {"error": kind.title, "message": message, "details": {"errorType": kind.error_type, **details}}
    ).encode("utf-8")


def answer_request(
    request: Request, kind: ErrorKind, message: str, details: Mapping[str, Any], request_id: str
) -> None:
    """
    Answer C{request} (on an HTTP/2 stream) with the proxy's JSON error
    through twisted.web's request, which ends the stream; the connection
    and its other streams carry on.
    """
    body = error_body(kind, message, details)
    request.setResponseCode(kind.status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"x-request-id", [request_id.encode("ascii")])
    request.write(body)
    request.finish()


def abort_client(request: Request) -> None:
    """
    Cut the client's answer short, so that it never looks complete: close
    an HTTP/1.1 connection, reset an HTTP/2 stream (its connection and other
    streams carry on).
    """
    transport = getattr(request, "transport", None)
    if transport is not None:
        transport.abortConnection()
        return
    channel = getattr(request, "channel", None)
    abort = getattr(channel, "abortConnection", None)
    if abort is not None:  # an H2Stream: RST_STREAM
        abort()


def protocol_name(request: Request) -> str:
    """
    @return: the request's protocol as the access log names it (C{HTTP/1.1},
        C{HTTP/2.0}).
    """
    proto = getattr(request, "clientproto", b"") or b""
    if proto == b"HTTP/2":
        return HTTP2
    return str(proto.decode("latin-1")) or "HTTP/1.1"


def tell_refused(stream: Any, kind: ErrorKind, message: str, request_id: str) -> None:
    """
    Tell the site's L{RefusalListener} (if any) that the request on the
    HTTP/2 C{stream} was refused with C{kind} before any resource saw it.
    """
    listener = getattr(getattr(stream, "site", None), "refusals", None)
    if listener is not None:
        method = (getattr(stream, "command", None) or b"-").decode("latin-1")
        target = (getattr(stream, "path", None) or b"-").decode("latin-1")[:MAX_LOGGED_TARGET]
        listener.request_refused(
            Refusal(kind.status, kind.error_type, method, target, request_id, 0.0, message, HTTP2)
        )
