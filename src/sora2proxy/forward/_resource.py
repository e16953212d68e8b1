"""
The proxy as a twisted.web resource: routing under the prefix, the gates a
request passes before it is sent (in-flight limit, request target, body
size, an upstream in service, Idempotency-Key), and the hand-off of each
request to its L{Exchange} (or of a WebSocket upgrade to its L{Tunnel}).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from .._errors import (
    BAD_REQUEST,
    BODY_TOO_LARGE,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    OVERLOADED,
    ErrorKind,
    body_too_large_message,
)
from .._identity import IdentityRule
from ..http._h2_heads import protocol_name
from ..http._headers import REQUEST_ID_KEY, request_id_from
from ..http._ids import RandomIds
from ..http._trace import trace_of
from ..idempotency._guard import CHECKED_METHODS, Reject, Replay, Ticket, Verdict
from ..limits._gate import Admission, Refusal
from ..resilience._retry import RetryPolicy
from ..resilience._upstreams import Upstream
from ._attempt import Target, body_length, forwarded_headers, split_target
from ._exchange import Exchange
from ._messages import unavailable
from ._parts import ProxyParts
from ._paths import TargetRefused, check_target
from ._relay import write_replay
from ._respond import RequestContext, Responder, client_connected
from ._seams import REPLAYED
from ._websocket import Tunnel, handshake_bytes, wants_websocket


@implementer(IResource)
class ProxyResource:
    """
    Forwards every request under the configured prefix to the upstreams.

    Mount it as a site's root (it matches the raw request path itself) or as
    a leaf anywhere in a resource tree whose paths it is configured for.
    L{build_proxy<sora2proxy.build_proxy>} builds one (C{Proxy.resource})
    with its collaborators, in one L{ProxyParts} value.

    @ivar parts: what it forwards with.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, parts: ProxyParts) -> None:
        """
        @param parts: what it forwards with: the configuration, clock, HTTP
            client, upstreams, retry budget, telemetry, access log, and the
            optional WebSocket endpoints, Idempotency-Key guard and
            C{--spawn} children (as C{build_proxy} assembles them).
        """
        self._new_id = RandomIds()
        self.reconfigure(parts)

    def reconfigure(self, parts: ProxyParts) -> None:
        """
        Forward new requests with C{parts}; those in flight keep what they started with.
        """
        self.parts = parts
        config = self._config = parts.config
        self._clock = parts.clock
        self._balancer = parts.balancer
        self._respond = Responder(config, parts.clock, parts.telemetry, parts.access, parts.children)
        self._policy = RetryPolicy(
            attempts=config.attempts,
            backoff=config.backoff,
            retry_all_methods=config.retry_all_methods,
            jitter=config.jitter,
            max_backoff=config.max_backoff,
            max_retry_after=config.max_retry_after,
        )
        self._prefix = config.prefix_bytes
        self._identity = IdentityRule(config.identity_headers)

    # IResource
    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the proxy resource is a leaf")

    def render(self, request: Request) -> int:
        """
        Start forwarding C{request}; the response is written later.
        """
        self.parts.telemetry.request_started()
        request_id = request_id_from(request.requestHeaders, self._new_id)
        request.responseHeaders._rawHeaders[REQUEST_ID_KEY] = [request_id.encode("ascii")]
        request.defaultContentType = None
        context = RequestContext(
            request,
            request_id,
            self._clock.seconds(),
            request.method,
            request.uri.decode("latin-1"),
            trace=trace_of(request.requestHeaders),
            protocol=protocol_name(request),
        )
        try:
            self._forward(context)
        except Exception:
            self._respond.internal_error(context, Failure(), 0)
        return NOT_DONE_YET

    def _forward(self, context: RequestContext) -> None:
        request = context.request
        if self.parts.telemetry.in_flight > self._config.max_inflight:
            message = f"The proxy is handling {self._config.max_inflight} requests already (--max-inflight)."
            self._respond.error(context, OVERLOADED, message, 0)
            return
        checked = check_target(request.method, request.uri)
        if isinstance(checked, TargetRefused):
            self._respond.error(context, BAD_REQUEST, checked.reason, 0)
            return
        target = split_target(checked, self._prefix)
        if target is None:
            path = context.path.partition("?")[0]
            self._respond.error(
                context, NOT_FOUND, f"{path} is not under the proxy prefix {self._config.prefix}.", 0
            )
            return
        if body_length(request) > self._config.max_body:
            # Only reached when the site is not a ProxySite (an embedding's own).
            self._respond.error(context, BODY_TOO_LARGE, body_too_large_message(self._config.max_body), 0)
            return
        first = self._balancer.choose()
        if first is None:
            self._unavailable(context)
            return
        if wants_websocket(request):
            self.parts.budget.record_request()
            self._tunnel(context, target.rest + target.query, first)
            return
        if self.parts.guard is None or request.method not in CHECKED_METHODS:
            self._send(context, target, first, None)
            return
        # The caller's identity, computed once here for every per-caller feature.
        context.caller = self._identity.of(request)
        verdict = self.parts.guard.verdict(request, target.rest, context.caller)
        verdict.addCallback(self._judged, context, target, first)
        verdict.addErrback(self._respond.internal_error_late, context, 0)

    def _judged(self, verdict: Verdict, context: RequestContext, target: Target, first: Upstream) -> None:
        if isinstance(verdict, Reject):
            self._respond.error(context, verdict.kind, verdict.message, 0, suggestion=verdict.suggestion)
        elif isinstance(verdict, Replay):
            if client_connected(context.request):
                write_replay(context.request, verdict.response, context.request_id)
            self._respond.log_access(context, verdict.response.status, 0, REPLAYED)
        else:
            self._send(context, target, first, verdict)

    def _send(self, context: RequestContext, target: Target, first: Upstream, ticket: Ticket | None) -> None:
        limits = self.parts.limits  # None without rules: the default costs this one check
        if limits is not None:
            caller = context.caller or self._identity.of(context.request)
            checking = limits.admit(context.request.method, target.rest, caller)
            if checking is not None:
                checking.addCallback(self._limited, context, target, first, ticket)
                checking.addErrback(self._respond.internal_error_late, context, 0)
                return
        Exchange(self.parts, self._policy, self._respond, context, target, first, ticket).start()

    def _limited(
        self,
        outcome: Admission | Refusal,
        context: RequestContext,
        target: Target,
        first: Upstream,
        ticket: Ticket | None,
    ) -> None:
        if isinstance(outcome, Refusal):
            if ticket is not None:
                ticket.release()  # not sent: the key is free for the retry
            outcome.apply(context.request)
            self._respond.error(
                context, outcome.kind, outcome.message, 0, outcome.retry_after, suggestion=outcome.suggestion
            )
            return
        outcome.apply(context.request)
        Exchange(self.parts, self._policy, self._respond, context, target, first, ticket).start()

    def _tunnel(self, context: RequestContext, rest: bytes, upstream: Upstream) -> None:
        request = context.request
        if self.parts.endpoints is None:
            self._respond.error(context, NOT_IMPLEMENTED, "WebSocket tunnelling is not set up here.", 0)
            return
        url = upstream.base + rest
        secure = bool(request.isSecure())
        config = self._config
        headers = forwarded_headers(
            request,
            context.request_id,
            secure,
            config.preserve_host,
            config.allow_underscore_headers,
            context.trace,
        )

        def answer(kind: ErrorKind, reason: str, tries: int) -> bytes:
            message = f"The API backend at {upstream.url} failed the WebSocket handshake: {reason}."
            error = self._respond.make_error(
                context, kind, message, tries, extra={"reason": reason}, upstream=upstream.url
            )
            self._respond.log_access(context, kind.status, tries, kind.error_type)
            return self._respond.raw(context, error)

        Tunnel(
            self._clock,
            self._policy,
            self.parts.endpoints.endpointForURI(URI.fromBytes(url)),
            handshake_bytes(request.method, url, headers, self._config.preserve_host),
            context.request_id,
            self._config.timeout,
            self._config.tunnel_idle_timeout,
            answer,
            lambda status, tries: self._tunnel_closed(context, status, tries, upstream.url),
        ).start(request)

    def _tunnel_closed(self, context: RequestContext, status: int, tries: int, upstream: str) -> None:
        # Logged when the tunnel closes: until then it holds an in-flight slot.
        self._respond.log_access(context, status, tries, "CLIENT_GONE" if status == 499 else "", upstream)

    def _unavailable(self, context: RequestContext) -> None:
        kind, message, retry_after = unavailable(self._balancer, self._config)
        self._respond.error(context, kind, message, 0, retry_after=retry_after)


__all__ = ["ProxyResource", "RequestContext"]
