"""
How a request ends: L{RequestContext} (what is known of one request),
L{Responder} (the proxy's own error answers, the bug answer, and the one
access event per request, counted in the telemetry).

Every error answer is logged whole; a client gets it whole only from
loopback or with C{--dev} (L{sees_internals}), any other client a redacted
copy (L{public_words}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.server import Request

from .._config import ProxyConfig
from .._errors import (
    EVENT_STREAM_STATUSES,
    INTERNAL,
    ErrorKind,
    ProxyError,
    raw_error,
    sees_internals,
    wants_event_stream,
    write_error,
    write_event_stream_error,
)
from .._identity import Identity
from ..http._date import HTTPDate
from ..http._h2_heads import abort_client
from ..http._trace import Trace
from ._messages import UNREACHABLE, SpawnedChild, child_note, public_words, suggestion_for
from ._seams import AccessSink, RequestTelemetry, record_access


@define
class RequestContext:
    """
    What the proxy knows of one request while it handles it.

    @ivar logged: its access event was emitted (exactly once per request).
    """

    request: Request
    request_id: str
    started: float
    method: bytes
    path: str
    logged: bool = False
    upstream: str | None = None
    caller: Identity | None = None
    trace: Trace | None = None
    protocol: str = "HTTP/1.1"


class Responder:
    """
    Writes the proxy's own answers and logs every request's end, once.
    """

    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        clock: IReactorTime,
        telemetry: RequestTelemetry,
        access: AccessSink,
        children: Sequence[SpawnedChild] = (),
    ) -> None:
        """
        @param children: the C{--spawn} children, named in an unreachable
            error when one of them exited.
        """
        self._config = config
        self._clock = clock
        self.telemetry = telemetry
        self._access = access
        self._children = children
        self._date = HTTPDate(clock)

    def error(
        self,
        context: RequestContext,
        kind: ErrorKind,
        message: str,
        attempts: int,
        retry_after: float = 1.0,
        extra: dict[str, Any] | None = None,
        upstream: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        """
        Answer C{context}'s request with the proxy's own error, log it whole
        and count it.

        @param suggestion: the how-to-fix line, when the caller has one
            about the request; by default the error type's own.
        """
        error = self.make_error(context, kind, message, attempts, retry_after, extra, upstream, suggestion)
        if not client_connected(context.request):
            self.log_access(context, 499, attempts, kind.error_type, upstream)
            return
        shown = self.view(context.request, error)
        if self._as_event(context.request, kind):  # the log and metrics keep the real status
            wait = shown.retry_after if kind.retry_after else self._config.backoff
            write_event_stream_error(context.request, shown, round(max(1.0, wait) * 1000))
        else:
            write_error(context.request, shown)
        self.log_access(context, kind.status, attempts, kind.error_type, upstream)

    def _as_event(self, request: Request, kind: ErrorKind) -> bool:
        """
        Whether the error goes to an C{EventSource} as a C{proxy-error} event.
        """
        statuses = EVENT_STREAM_STATUSES
        return kind.status in statuses and self._config.sse_errors != "plain" and wants_event_stream(request)

    def make_error(
        self,
        context: RequestContext,
        kind: ErrorKind,
        message: str,
        attempts: int,
        retry_after: float = 1.0,
        extra: dict[str, Any] | None = None,
        upstream: str | None = None,
        suggestion: str | None = None,
    ) -> ProxyError:
        """
        The whole error (what the operator reads), logged.
        """
        suggestion = suggestion or suggestion_for(kind, self._config)
        if kind.error_type in UNREACHABLE:
            note = child_note(self._children, self._clock.seconds())
            if note is not None:
                message, suggestion = f"{message} {note.fact}", note.suggestion
        error = ProxyError(
            kind=kind,
            message=message,
            attempts=attempts,
            duration_ms=self.elapsed_ms(context),
            suggestion=suggestion,
            upstream=upstream or ", ".join(self._config.upstreams),
            request_id=context.request_id,
            retry_after=math.ceil(retry_after),
            extra=_traced(extra or {}, context.trace),
        )
        self.log.emit(
            LogLevel.warn if kind.status >= 500 else LogLevel.info,
            "{status} {error_type} for request {request_id}: {message} Suggestion: {suggestion} "
            "(upstream {upstream})",
            status=kind.status,
            error_type=kind.error_type,
            request_id=context.request_id,
            message=message,
            suggestion=suggestion,
            upstream=error.upstream,
            reason=error.extra.get("reason", ""),
        )
        return error

    def view(self, request: Request, error: ProxyError) -> ProxyError:
        """
        C{error} as the client of C{request} may read it: whole from
        loopback or with C{--dev}, else redacted.
        """
        if sees_internals(request, self._config.dev):
            return error
        return error.redacted(*public_words(error.kind, error.message, error.suggestion, self._config))

    def raw(self, context: RequestContext, error: ProxyError) -> bytes:
        """
        C{error} as a whole response in bytes, as its client may read it
        (for a connection closed outside twisted.web).
        """
        shown = self.view(context.request, error)
        return raw_error(shown.kind, shown.message, shown.details(), context.request_id, self._date.now())

    def internal_error(self, context: RequestContext, failure: Failure, attempts: int) -> None:
        self.log.failure(
            "proxy bug while handling request {request_id}", failure, request_id=context.request_id
        )
        extra: dict[str, Any] = {}
        if self._config.dev:
            extra["traceback"] = failure.getTraceback()
        request = context.request
        if getattr(request, "startedWriting", False):
            abort_client(request)
            self.log_access(context, request.code, attempts, INTERNAL.error_type)
            return
        self.error(
            context,
            INTERNAL,
            f"The proxy failed while forwarding to {self._config.upstream}; this is a bug in the proxy.",
            attempts,
            extra=extra,
        )

    def internal_error_late(self, failure: Failure, context: RequestContext, loop: Any) -> None:
        """
        An errback: a bug after the request was handed on.
        """
        self.internal_error(context, failure, getattr(loop, "tries", 0))

    def elapsed_ms(self, context: RequestContext) -> int:
        return round((self._clock.seconds() - context.started) * 1000)

    def log_access(
        self,
        context: RequestContext,
        status: int,
        tries: int,
        error_type: str,
        upstream: str | None = None,
    ) -> None:
        if context.logged:
            return
        context.logged = True
        elapsed = self._clock.seconds() - context.started
        trace_id = "" if context.trace is None else context.trace.trace_id
        method = context.method.decode("latin-1")
        self.telemetry.request_finished(
            method,
            context.path,
            status,
            error_type,
            elapsed,
            context.request_id,
            upstream or "",  # the status page names no upstream for a request never sent
            trace_id,
        )
        record_access(
            self._access,
            method,
            context.path,
            status,
            tries,
            elapsed,
            error_type,
            context.request_id,
            upstream or self._config.upstream,
            trace_id,
            protocol=context.protocol,
        )


def _traced(extra: dict[str, Any], trace: Trace | None) -> dict[str, Any]:
    """
    An error's details with its C{traceId}.
    """
    return extra if trace is None else {**extra, "traceId": trace.trace_id}


def client_connected(request: Request) -> bool:
    return not getattr(request, "_disconnected", False)
