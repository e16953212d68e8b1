"""
L{Exchange}: one request forwarded, from its first try to the last byte of
its answer.  It holds what the request needs while it is in flight: the
router and the retry loop that send its tries, the relay of the answer to
the client, and its Idempotency-Key ticket; the client leaving, the answer
arriving, the loop giving up and the answer ending are its methods.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from ..idempotency._guard import Ticket
from ..resilience._retry import GaveUp, RetryLoop, RetryPolicy
from ..resilience._upstreams import RequestRouter, Upstream
from ._attempt import Target, body_of, forwarded_headers
from ._messages import gave_up_message
from ._parts import ProxyParts
from ._relay import BodyRelay, start_response
from ._respond import RequestContext, Responder


@define(eq=False)
class Exchange:
    """
    One request's trip upstream and back, once it has passed the proxy's
    gates (see L{sora2proxy.forward._resource.ProxyResource}).

    @ivar context: what is known of the request.
    """

    _parts: ProxyParts
    _policy: RetryPolicy
    _respond: Responder
    context: RequestContext
    _target: Target
    _first: Upstream
    _ticket: Ticket | None = None
    _router: RequestRouter = field(init=False)
    _loop: RetryLoop = field(init=False)
    _result: Deferred[IResponse] = field(init=False)
    _relay: BodyRelay | None = field(default=None, init=False)
    _status: int = field(default=0, init=False)

    def start(self) -> None:
        """
        Send the first try; the answer, or the proxy's error, follows.
        """
        self._parts.budget.record_request()
        self._router = self._route()
        self._loop = self._retry_loop()
        self._result = self._loop.run()
        self.context.request.notifyFinish().addErrback(self.client_gone)
        self._result.addCallbacks(self.answered, self.failed).addErrback(
            self._respond.internal_error_late, self.context, self._loop
        )

    def _route(self) -> RequestRouter:
        request, config = self.context.request, self._parts.config
        headers = forwarded_headers(
            request,
            self.context.request_id,
            bool(request.isSecure()),
            config.preserve_host,
            config.allow_underscore_headers,
        )
        return RequestRouter(
            self._parts.balancer,
            self._parts.agent,
            request.method,
            self._target.rest + self._target.query,
            headers,
            body_of(request, self._parts.cooperator),
            self._first,
            self._parts.telemetry,
            self._parts.clock,
        )

    def _retry_loop(self) -> RetryLoop:
        request, config = self.context.request, self._parts.config
        deadline = config.deadline
        return RetryLoop(
            self._parts.clock,
            self._policy,
            self._router,
            request.method,
            request.requestHeaders.hasHeader(b"idempotency-key"),
            config.timeout,
            self.context.started + deadline if deadline else None,
            self._parts.budget,
            self._parts.random,
        )

    def client_gone(self, _: object) -> None:
        """
        The client went away: stop relaying the answer, or stop trying.
        """
        if self._relay is not None:
            self._relay.client_gone()
        else:
            self._result.cancel()

    def answered(self, response: IResponse) -> None:
        """
        A try got the answer to pass on: relay its head, then its body.
        """
        context, request, ticket = self.context, self.context.request, self._ticket
        context.upstream = self._router.current.url
        base = self._router.current.base
        start_response(request, response, context.request_id, base, self._parts.config.prefix_bytes)
        self._status = response.code
        if ticket is not None:  # stored as the client gets it: a replay is the same answer
            ticket.answered(request.code, request.code_message, request.responseHeaders)
        self._relay = BodyRelay(request, self.done, None if ticket is None else ticket.data)
        response.deliverBody(self._relay)

    def done(self, outcome: Failure | None) -> None:
        """
        The answer's body ended (C{outcome} L{None}) or was cut short.
        """
        if self._ticket is not None:
            self._ticket.finished(outcome)
        error_type = "" if outcome is None else "UPSTREAM_ABORTED"
        upstream = self.context.upstream
        self._respond.log_access(self.context, self._status, self._loop.tries, error_type, upstream)

    def failed(self, failure: Failure) -> None:
        """
        No answer to pass on: the client left, the loop gave up, or a bug.
        """
        loop, upstream = self._loop, self._router.current.url
        if self._ticket is not None:
            self._ticket.release()
        if failure.check(CancelledError):
            self._respond.log_access(self.context, 499, loop.tries, "CLIENT_GONE", upstream)
            return
        gave_up = failure.value
        if isinstance(gave_up, GaveUp):
            unknown = self._ticket is not None and loop.maybe_reached
            self._gave_up(gave_up, upstream, loop.budget_exhausted, unknown)
        else:
            self._respond.internal_error(self.context, failure, loop.tries)

    def _gave_up(self, gave_up: GaveUp, upstream: str, budget: bool, unknown: bool) -> None:
        message, extra = gave_up_message(gave_up, upstream, budget)
        if unknown:
            # The key is released: the backend may have acted; it stays the authority.
            extra["outcomeUnknown"] = True
        self._respond.error(
            self.context,
            gave_up.failure.kind,
            message,
            gave_up.tries,
            retry_after=self._parts.config.health_interval,
            extra=extra,
            upstream=upstream,
        )
