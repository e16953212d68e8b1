"""
The proxy as a twisted.web resource: routing under the prefix, the health
gate, and the hand-off of each request to a L{RetryLoop} whose response is
relayed to the client.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ._attempt import body_of, forwarded_headers, split_target, try_sender
from ._config import ProxyConfig
from ._errors import (
    ECONNREFUSED,
    HEALTH_CHECK_FAILED,
    INTERNAL,
    NOT_FOUND,
    TIMEOUT,
    ErrorKind,
    ProxyError,
    write_error,
)
from ._headers import REQUEST_ID, request_id_from
from ._health import HealthState
from ._relay import BodyRelay, start_response
from ._retry import GaveUp, RetryLoop, RetryPolicy


@frozen
class RequestContext:
    """
    What the proxy knows of one request while it handles it.
    """

    request: Request
    request_id: str
    started: float
    method: bytes
    path: str


@implementer(IResource)
class ProxyResource:
    """
    Forwards every request under the configured prefix to the upstream.

    Mount it as a site's root (it matches the raw request path itself) or as
    a leaf anywhere in a resource tree whose paths it is configured for.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        clock: IReactorTime,
        agent: IAgent,
        health: HealthState | None = None,
        cooperator: Cooperator | None = None,
    ) -> None:
        """
        @param clock: the reactor's time, for timeouts and backoff.
        @param agent: the HTTP client that sends tries upstream.
        @param health: the upstream's health, read by the gate; L{None}
            without health checks.
        @param cooperator: schedules the writing of large request bodies.
        """
        self._config = config
        self._clock = clock
        self._agent = agent
        self._health = health
        self._cooperator = cooperator or Cooperator(
            scheduler=lambda work: clock.callLater(0, work), started=True
        )
        self._policy = RetryPolicy(config.attempts, config.backoff, config.retry_all_methods)
        self._base = config.upstream_base
        self._prefix = config.prefix_bytes

    # IResource
    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the proxy resource is a leaf")

    def render(self, request: Request) -> int:
        """
        Start forwarding C{request}; the response is written later.
        """
        request_id = request_id_from(request.requestHeaders)
        request.responseHeaders.setRawHeaders(REQUEST_ID, [request_id.encode("ascii")])
        request.defaultContentType = None
        context = RequestContext(
            request,
            request_id,
            self._clock.seconds(),
            request.method,
            request.uri.decode("latin-1"),
        )
        try:
            self._forward(context)
        except Exception:
            self._internal_error(context, Failure(), 0)
        return NOT_DONE_YET

    def _forward(self, context: RequestContext) -> None:
        request = context.request
        target = split_target(request.uri, self._prefix)
        if target is None:
            path = context.path.partition("?")[0]
            self._error(context, NOT_FOUND, f"{path} is not under the proxy prefix {self._config.prefix}.", 0)
            return
        if self._health is not None and self._health.down:
            self._error(
                context,
                HEALTH_CHECK_FAILED,
                f"The API backend at {self._config.upstream} is failing its health check "
                f"({self._health.reason}); the request was not sent.",
                0,
                retry_after=self._config.health_interval,
            )
            return
        secure = bool(request.isSecure())
        send = try_sender(
            self._agent,
            request.method,
            target.url(self._base),
            forwarded_headers(request, context.request_id, secure),
            body_of(request, self._cooperator),
        )
        loop = RetryLoop(
            self._clock,
            self._policy,
            send,
            request.method,
            request.requestHeaders.hasHeader(b"idempotency-key"),
            self._config.timeout,
            self._health,
        )
        result = loop.run()
        relay: list[BodyRelay] = []

        def client_gone(_: object) -> None:
            if relay:
                relay[0].client_gone()
            else:
                result.cancel()

        request.notifyFinish().addErrback(client_gone)

        def answered(response: IResponse) -> None:
            start_response(request, response, context.request_id)
            body = BodyRelay(request, lambda outcome: self._done(context, loop.tries, response.code, outcome))
            relay.append(body)
            response.deliverBody(body)

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                self._log_access(context, 499, loop.tries, "CLIENT_GONE")
                return
            gave_up = failure.value
            if isinstance(gave_up, GaveUp):
                self._gave_up(context, gave_up)
            else:
                self._internal_error(context, failure, loop.tries)

        result.addCallbacks(answered, failed).addErrback(self._internal_error_late, context, loop)

    def _gave_up(self, context: RequestContext, gave_up: GaveUp) -> None:
        kind = gave_up.failure.kind
        tries = gave_up.tries
        upstream = self._config.upstream
        if kind is ECONNREFUSED:
            message = f"The API backend at {upstream} refused the connection ({tries} attempts)."
        elif kind is TIMEOUT:
            message = f"The API backend at {upstream} timed out: {gave_up.failure.reason} ({tries} attempts)."
        else:
            message = f"The API backend at {upstream} failed: {gave_up.failure.reason} ({tries} attempts)."
        self._error(
            context,
            kind,
            message,
            tries,
            retry_after=self._config.health_interval,
            extra={"retryable": gave_up.retryable, "reason": gave_up.failure.reason},
        )

    def _error(
        self,
        context: RequestContext,
        kind: ErrorKind,
        message: str,
        attempts: int,
        retry_after: float = 1.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        error = ProxyError(
            kind=kind,
            message=message,
            attempts=attempts,
            duration_ms=self._elapsed_ms(context),
            suggestion=self._config.suggestion,
            upstream=self._config.upstream,
            request_id=context.request_id,
            retry_after=math.ceil(retry_after),
            extra=extra or {},
        )
        if not _client_connected(context.request):
            self._log_access(context, 499, attempts, kind.error_type)
            return
        write_error(context.request, error)
        self._log_access(context, kind.status, attempts, kind.error_type)

    def _internal_error(self, context: RequestContext, failure: Failure, attempts: int) -> None:
        self.log.failure(
            "proxy bug while handling request {request_id}", failure, request_id=context.request_id
        )
        extra: dict[str, Any] = {}
        if self._config.dev:
            extra["traceback"] = failure.getTraceback()
        request = context.request
        if getattr(request, "startedWriting", False):
            transport = getattr(request, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        self._error(
            context,
            INTERNAL,
            f"The proxy failed while forwarding to {self._config.upstream}; this is a bug in the proxy.",
            attempts,
            extra=extra,
        )

    def _internal_error_late(self, failure: Failure, context: RequestContext, loop: RetryLoop) -> None:
        self._internal_error(context, failure, loop.tries)

    def _done(self, context: RequestContext, tries: int, status: int, outcome: Failure | None) -> None:
        error_type = "" if outcome is None else "UPSTREAM_ABORTED"
        self._log_access(context, status, tries, error_type)

    def _elapsed_ms(self, context: RequestContext) -> int:
        return round((self._clock.seconds() - context.started) * 1000)

    def _log_access(self, context: RequestContext, status: int, tries: int, error_type: str) -> None:
        self.log.info(
            "{method} {path} {status} tries={tries} {duration_ms}ms {error_type} id={request_id}",
            method=context.method.decode("latin-1"),
            path=context.path,
            status=status,
            tries=tries,
            duration_ms=self._elapsed_ms(context),
            error_type=error_type,
            request_id=context.request_id,
            upstream=self._config.upstream,
        )


def _client_connected(request: Request) -> bool:
    return not getattr(request, "_disconnected", False)


__all__ = ["ProxyResource", "RequestContext"]
