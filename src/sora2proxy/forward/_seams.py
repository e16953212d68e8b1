"""
What the forwarding of a request reports, and to whom: the
L{typing.Protocol}s of its metrics (L{RequestTelemetry}) and of its access
log (L{AccessSink}).  C{ops}' C{Telemetry} and sinks satisfy them
structurally, so that this layer imports nothing of C{ops}; C{build_proxy}
hands them in.

Every text field that reaches an L{AccessSink} is escaped (L{escaped}): a
request target's control bytes can never split or forge an access line, for
a reader that splits on C{\\n} or on every line break that C{str.splitlines}
knows.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

#: The access log's mark of an Idempotency-Key replay: an answer, not an error.
REPLAYED = "IDEMPOTENT_REPLAY"

#: What an access-log field never holds as is: anything but printable ASCII
#: (C0 and C1 controls, DEL, U+0085 and the Unicode line separators, which
#: C{str.splitlines} breaks on, and a request target's non-ASCII bytes, read
#: as Latin-1: logged as the bytes sent), and the backslash (so that an
#: escape is unambiguous).
_UNSAFE = re.compile("[^\x20-\x7e]|\\\\")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escaped(text: str) -> str:
    """
    @return: C{text} with characters outside printable ASCII and
        backslashes written as C{\\xHH} (C{\\uHHHH} above U+00FF), as nginx
        escapes its access log.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


class AccessSink(Protocol):
    """
    Where each request's access line goes (C{--access-log}).

    @ivar wants_fields: whether L{record} reads its C{fields}; a sink that
        writes the line alone is given none (they are not built for it).
    """

    wants_fields: bool

    def record(self, line: str, fields: dict[str, Any]) -> None:
        """
        Log one request: C{line} for people, C{fields} for machines (every
        text field L{escaped}; empty unless L{wants_fields}).
        """


def record_access(
    sink: AccessSink,
    method: str,
    path: str,
    status: int,
    tries: int,
    seconds: float,
    error_type: str,
    request_id: str,
    upstream: str,
    trace_id: str = "",
    protocol: str = "HTTP/1.1",
) -> None:
    """
    Write one request's access line to C{sink}, every text field escaped
    (the method and path are the client's bytes); C{trace_id} is its W3C trace's.

    @param protocol: the client's protocol (C{HTTP/1.1}, C{HTTP/2.0}); the
        line names it (C{proto=HTTP/2.0}) when it is not HTTP/1.1, the
        fields always.
    """
    joined = "".join((method, path, error_type, request_id, upstream, protocol))
    # One check for all six in the common case: every character _UNSAFE
    # matches but the backslash is one that isascii and isprintable refuse.
    if not (joined.isascii() and joined.isprintable()) or "\\" in joined:
        method, path, error_type, request_id, upstream, protocol = map(
            escaped, (method, path, error_type, request_id, upstream, protocol)
        )
    duration_ms = round(seconds * 1000)
    trace = f" trace={trace_id}" if trace_id else ""
    proto = "" if protocol == "HTTP/1.1" else f" proto={protocol}"
    line = (
        f"{method} {path} {status} tries={tries} {duration_ms}ms {error_type} id={request_id}{trace}{proto}"
    )
    if not sink.wants_fields:
        sink.record(line, {})
        return
    fields = {
        "protocol": protocol,
        "method": method,
        "path": path,
        "status": status,
        "tries": tries,
        "duration_ms": duration_ms,
        "error_type": error_type,
        "request_id": request_id,
        "upstream": upstream,
        "trace_id": trace_id,
    }
    sink.record(line, fields)


class RequestTelemetry(Protocol):
    """
    Told of each request's start and end, and of each try it sends.
    """

    @property
    def in_flight(self) -> int:
        """
        Requests being handled now.
        """

    def request_started(self) -> None:
        """
        A request arrived.
        """

    def request_finished(
        self,
        method: str,
        path: str,
        status: int,
        error_type: str,
        seconds: float,
        request_id: str,
        upstream: str,
        trace_id: str = "",
    ) -> None:
        """
        A request was answered (or its client left): C{error_type} is empty,
        the error's type, or L{REPLAYED} for a replayed stored answer;
        C{upstream} is empty for a request never sent.
        """

    def try_finished(self, upstream: str, outcome: str, seconds: float) -> None:
        """
        A try to C{upstream} ended: C{outcome} is C{ok}, C{5xx} or the
        failure's errorType; C{seconds} from sending to response headers.
        """

    def retried(self, upstream: str) -> None:
        """
        A retry is sent to C{upstream}.
        """
