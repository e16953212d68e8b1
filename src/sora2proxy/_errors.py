"""
The error table and its rendering: every error response the proxy makes is
built here, from a L{ProxyError} value, as JSON (or a small HTML page for a
browser).

This module imports nothing of the package.
"""

from __future__ import annotations

import html
import ipaddress
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from attrs import evolve, field, frozen
from twisted.web.iweb import IRequest

JSON_TYPE = b"application/json"
HTML_TYPE = b"text/html; charset=utf-8"

#: The phrases RFC 9110 renamed (Python 3.11's C{HTTPStatus} has the old ones).
_RFC9110_PHRASES = {
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}
_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus} | _RFC9110_PHRASES

#: The C{details} members any client may read; the others (C{upstream},
#: C{reason}, C{traceback}) only a loopback client or one of a C{--dev} proxy.
PUBLIC_DETAILS = frozenset(
    {
        "errorType",
        "attempts",
        "durationMs",
        "suggestion",
        "requestId",
        "traceId",
        "retryable",
        "retryBudgetExhausted",
        "outcomeUnknown",
        "maxBody",
    }
)

#: Request headers a proxy in front adds: a loopback peer that sends one
#: relays someone else's request.
_RELAYED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def reason_phrase(status: int, given: bytes | None = None) -> bytes:
    """
    The reason phrase of C{status} in the IANA registry (RFC 9110's words);
    for a status the registry lacks, C{given} (the upstream's phrase) if it
    is a valid reason phrase, else none.

    Twisted's own table lacks 421, 422, 425, 428, 429, 431, 451 and others,
    and writes C{Unknown Status} for them.
    """
    known = _PHRASES.get(status)
    if known is not None:
        return known
    if given and all(byte == 0x09 or 0x20 <= byte != 0x7F for byte in given):
        return given
    return b""


def sees_internals(request: IRequest, dev: bool) -> bool:
    """
    Whether the client of C{request} may read the proxy's internals in an
    error (upstream URLs, failure reasons, the configured suggestion): with
    C{--dev}, or a loopback client that relays nobody else's request (no
    C{Forwarded}, C{X-Forwarded-For} or C{X-Real-IP}).
    """
    if dev:
        return True
    headers = request.requestHeaders
    if any(headers.hasHeader(name) for name in _RELAYED):
        return False
    host = getattr(request.getClientAddress(), "host", None)
    try:
        address = ipaddress.ip_address(host) if isinstance(host, str) else None
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


@frozen
class ErrorKind:
    """
    One row of the error table.

    @ivar error_type: the C{details.errorType} value clients match on.
    @ivar status: the HTTP status code.
    @ivar title: the short C{error} string.
    @ivar retry_after: whether the response carries C{Retry-After}.
    """

    error_type: str
    status: int
    title: str
    retry_after: bool = False


ECONNREFUSED = ErrorKind("ECONNREFUSED", 503, "Backend unavailable", retry_after=True)
TIMEOUT = ErrorKind("TIMEOUT", 504, "Backend timeout")
HEALTH_CHECK_FAILED = ErrorKind("HEALTH_CHECK_FAILED", 503, "Backend unhealthy", retry_after=True)
UPSTREAM_ERROR = ErrorKind("UPSTREAM_ERROR", 502, "Bad gateway")
CIRCUIT_OPEN = ErrorKind("CIRCUIT_OPEN", 503, "Backend ejected", retry_after=True)
NOT_FOUND = ErrorKind("NOT_FOUND", 404, "Not found")
BODY_TOO_LARGE = ErrorKind("BODY_TOO_LARGE", 413, "Request body too large")
UPSTREAM_TLS_ERROR = ErrorKind("UPSTREAM_TLS_ERROR", 502, "Upstream TLS failure")
BAD_REQUEST = ErrorKind("BAD_REQUEST", 400, "Bad request")
INTERNAL = ErrorKind("INTERNAL", 500, "Internal proxy error")
OVERLOADED = ErrorKind("OVERLOADED", 503, "Proxy overloaded", retry_after=True)
NOT_IMPLEMENTED = ErrorKind("NOT_IMPLEMENTED", 501, "Not implemented")

ERROR_KINDS: Mapping[str, ErrorKind] = {
    kind.error_type: kind
    for kind in (
        ECONNREFUSED,
        TIMEOUT,
        HEALTH_CHECK_FAILED,
        UPSTREAM_ERROR,
        CIRCUIT_OPEN,
        NOT_FOUND,
        BODY_TOO_LARGE,
        UPSTREAM_TLS_ERROR,
        BAD_REQUEST,
        INTERNAL,
        OVERLOADED,
        NOT_IMPLEMENTED,
    )
}


def body_too_large_message(limit: int) -> str:
    """
    @return: the message of a 413 for a body over C{limit} bytes (from the
        site as the body arrives, or from the resource on a site of its own).
    """
    return f"The request body is larger than the proxy's limit of {limit} bytes (--max-body)."


@frozen
class ProxyError:
    """
    An error response, ready to render.

    @ivar kind: its row of the error table.
    @ivar message: one sentence that names the upstream and says what broke.
    @ivar attempts: how many upstream tries were made.
    @ivar duration_ms: time from the request's arrival, in milliseconds.
    @ivar suggestion: the how-to-fix line.
    @ivar upstream: the upstream base URL concerned (none in a redacted error).
    @ivar request_id: the request's C{X-Request-ID}.
    @ivar retry_after: seconds for C{Retry-After}, for the kinds that send it.
    @ivar extra: further C{details} members (C{retryable}, C{traceback}...).
    """

    kind: ErrorKind
    message: str
    attempts: int
    duration_ms: int
    suggestion: str
    upstream: str
    request_id: str
    retry_after: int = 1
    extra: Mapping[str, Any] = field(factory=dict)

    def details(self) -> dict[str, Any]:
        """
        @return: the C{details} object of the JSON body.
        """
        details: dict[str, Any] = {
            "errorType": self.kind.error_type,
            "attempts": self.attempts,
            "durationMs": self.duration_ms,
            "suggestion": self.suggestion,
            "upstream": self.upstream,
            "requestId": self.request_id,
        }
        if not self.upstream:
            del details["upstream"]
        details.update(self.extra)
        return details

    def redacted(self, message: str, suggestion: str) -> ProxyError:
        """
        This error as a client outside the proxy's host reads it: C{message}
        and C{suggestion} instead of its own, no upstream, and only the
        L{PUBLIC_DETAILS} of its extra members.
        """
        extra = {name: value for name, value in self.extra.items() if name in PUBLIC_DETAILS}
        return evolve(self, message=message, suggestion=suggestion, upstream="", extra=extra)

    def to_json(self) -> bytes:
        """
        @return: the JSON body, UTF-8 encoded.
        """
        body = {"error": self.kind.title, "message": self.message, "details": self.details()}
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def to_html(self) -> bytes:
        """
        @return: a small, self-contained HTML page with the same facts.
        """
        rows = "".join(
            f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>"
            for name, value in self.details().items()
            if name != "traceback"
        )
        title = html.escape(f"{self.kind.status} {self.kind.title}")
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{title}</title><style>body{{font:16px system-ui,sans-serif;"
            "max-width:46em;margin:3em auto;padding:0 1em}th{text-align:left;padding-right:1em}"
            ".fix{background:#fff3cd;padding:.6em 1em;border-radius:4px}</style></head><body>"
            f"<h1>{title}</h1><p>{html.escape(self.message)}</p>"
            f"<p class=fix>{html.escape(self.suggestion)}</p><table>{rows}</table></body></html>"
        )
        return page.encode("utf-8")


def raw_error(
    kind: ErrorKind, message: str, details: Mapping[str, Any], request_id: str, date: bytes | None = None
) -> bytes:
    """
    A whole HTTP/1.1 error response as bytes, C{Connection: close}, for a
    connection the proxy is about to close without twisted.web's request
    machinery (refused request heads and bodies, WebSocket handshakes).

    @param date: the C{Date} header's value (C{HTTPDate.now()}), if any.
    """
    body = json.dumps(
        {"error": kind.title, "message": message, "details": {"errorType": kind.error_type, **details}}
    ).encode("utf-8")
    phrase = reason_phrase(kind.status)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\n%sconnection: close\r\n\r\n"
    ) % (kind.status, phrase, len(body), request_id.encode("ascii"), b"date: %s\r\n" % date if date else b"")
    return head + body


def wants_html(request: IRequest) -> bool:
    """
    @return: whether the client is a browser asking for a page rather than data.
    """
    accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).lower()
    return b"text/html" in accept


#: The statuses of the proxy's own errors that an C{EventSource} gets as an event.
EVENT_STREAM_STATUSES = frozenset({429, 502, 503, 504})


def wants_event_stream(request: IRequest) -> bool:
    """
    @return: whether the client is an C{EventSource} (C{Accept: text/event-stream}).
    """
    accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).lower()
    return b"text/event-stream" in accept


def write_event_stream_error(request: IRequest, error: ProxyError, retry_ms: int) -> None:
    """
    Send C{error} to an C{EventSource} as a whole stream, and finish it: 200
    C{text/event-stream} with C{retry: RETRY_MS}, one C{proxy-error} event
    whose data is the JSON error body, and the end.  A browser's
    C{EventSource} closes for good on any other status; on this one it
    reconnects by itself after C{retry_ms} (the HTML standard, 9.2).
    """
    body = b"retry: %d\nevent: proxy-error\ndata: %s\n\n" % (retry_ms, error.to_json())
    request.setResponseCode(200, b"OK")
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"text/event-stream; charset=utf-8"])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    request.write(body)
    request.finish()


def write_error(request: IRequest, error: ProxyError) -> None:
    """
    Send C{error} as the whole response to C{request} and finish it.

    Headers already set on the response (C{X-Request-ID}) are kept; a browser
    gets HTML, every other client JSON.
    """
    request.setResponseCode(error.kind.status, reason_phrase(error.kind.status))
    if wants_html(request):
        body, content_type = error.to_html(), HTML_TYPE
    else:
        body, content_type = error.to_json(), JSON_TYPE
    request.responseHeaders.setRawHeaders(b"content-type", [content_type])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    if error.kind.retry_after:
        request.responseHeaders.setRawHeaders(b"retry-after", [b"%d" % max(1, error.retry_after)])
    request.write(body)
    request.finish()
