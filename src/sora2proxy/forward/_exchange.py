"""
L{Exchange}: one request forwarded, from its first try to the last byte of
its answer.  It holds what the request needs while it is in flight: the
router and the retry loop that send its tries, the relay of the answer to
the client, and its Idempotency-Key ticket; the client leaving, the answer
arriving, the loop giving up and the answer ending are its methods.

A client that leaves ends its exchange (the try or the wait is cancelled,
the upstream connection closed), except once a request with an
Idempotency-Key ticket is with the upstream (its whole body sent): then
the backend may be acting on it, and its answer is the key's (Stripe's
rule).  The exchange carries on without the client, within C{--timeout}
and C{--deadline}: the answer is read to its end and stored for the
client's retry, and no further try is sent.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from ..http._headers import canonical
from ..idempotency._guard import Ticket
from ..resilience._classify import TryFailure
from ..resilience._retry import GaveUp, RetryLoop, RetryPolicy
from ..resilience._upstreams import RequestRouter, Upstream
from ._attempt import ReplayableBody, Target, body_of, forwarded_headers
from ._messages import gave_up_message
from ._parts import ProxyParts
from ._relay import BodyRelay, public_base, start_response
from ._respond import RequestContext, Responder

_IDEMPOTENCY_KEY = canonical(b"idempotency-key")

#: The error type of a request whose client left before its answer ended.
CLIENT_GONE = "CLIENT_GONE"


@define(eq=False)
class _WatchedTries:
    """
    The exchange's router as the retry loop sees it: the same tries, and
    whether the one in flight has handed its whole body to the upstream.
    """

    _router: RequestRouter
    _body: ReplayableBody | None
    _exchange: Exchange
    in_flight: bool = False
    sent: int = 0
    _whole_before: int = 0

    @property
    def body_sent(self) -> bool:
        """
        The try in flight has sent its whole request: the backend may act on it.
        """
        return self.in_flight and (self._body is None or self._body.whole_sends > self._whole_before)

    def send(self) -> Deferred[IResponse]:
        if self._exchange.gone:  # the client left during a wait: no further try
            raise CancelledError("the client went away")
        self.in_flight = True
        self.sent += 1
        self._whole_before = 0 if self._body is None else self._body.whole_sends
        return self._router.send()

    def succeeded(self, response: IResponse) -> None:
        self.in_flight = False
        self._router.succeeded(response)
        self._exchange.try_ended()

    def failed(self, failure: TryFailure) -> None:
        self.in_flight = False
        self._router.failed(failure)
        self._exchange.try_ended()

    def abandoned(self) -> None:
        self.in_flight = False
        self._router.abandoned()

    def cancelled(self) -> None:
        self._router.cancelled()


@define(eq=False)
class Exchange:
    """
    One request's trip upstream and back, once it has passed the proxy's
    gates (see L{sora2proxy.forward._resource.ProxyResource}).

    @ivar context: what is known of the request.
    @ivar gone: its client went away.
    """

    _parts: ProxyParts
    _policy: RetryPolicy
    _respond: Responder
    context: RequestContext
    _target: Target
    _first: Upstream
    _ticket: Ticket | None = None
    # Set by start() or answered() before they are read (no default to store):
    _router: RequestRouter = field(init=False)
    _tries: _WatchedTries | None = field(init=False)  # None once the exchange is over (_let_go)
    _loop: RetryLoop | None = field(init=False)
    _public: bytes = field(init=False)
    _status: int = field(init=False)
    _head_sent: bool = field(init=False)
    _relay: BodyRelay | None = field(default=None, init=False)
    gone: bool = field(default=False, init=False)
    _limit: IDelayedCall | None = field(default=None, init=False)

    def start(self) -> None:
        """
        Send the first try; the answer, or the proxy's error, follows.
        """
        parts, context = self._parts, self.context
        request, config = context.request, parts.config
        parts.budget.record_request()
        secure = bool(request.isSecure())
        self._public = public_base(request, secure)  # while the client is there
        body = body_of(request, parts.cooperator)
        self._router = self._route(body, secure)
        tries = self._tries = _WatchedTries(self._router, body, self)
        deadline = config.deadline
        loop = self._loop = RetryLoop(
            parts.clock,
            self._policy,
            tries,
            request.method,
            _IDEMPOTENCY_KEY in request.requestHeaders._rawHeaders,
            config.timeout,
            context.started + deadline if deadline else None,
            parts.budget,
            parts.random,
            deadlines=parts.deadlines,
        )
        loop.start(self)  # answered() or failed() follows, now or later
        when_gone = getattr(request, "when_gone", None)  # a ProxyRequest's, without a Deferred
        if when_gone is not None:
            when_gone(lambda: self.client_gone(None))
        else:
            request.notifyFinish().addErrback(self.client_gone)

    def _route(self, body: ReplayableBody | None, secure: bool) -> RequestRouter:
        parts, context = self._parts, self.context
        request, config, target = context.request, parts.config, self._target
        headers = forwarded_headers(
            request,
            context.request_id,
            secure,
            config.preserve_host,
            config.allow_underscore_headers,
            context.trace,
        )
        return RequestRouter(
            parts.balancer,
            parts.agent,
            request.method,
            target.rest + target.query,
            headers,
            body,
            self._first,
            parts.telemetry,
            parts.clock,
        )

    def client_gone(self, _: object) -> None:
        """
        The client went away: stop relaying the answer, or stop trying;
        but a request whose key's answer is under way carries on without it.
        """
        self.gone = True
        relay, ticket, loop, tries = self._relay, self._ticket, self._loop, self._tries
        if loop is None or tries is None:
            return  # the exchange is over: nothing left to stop
        if relay is not None:
            keep = ticket is not None and ticket.storing
            relay.client_gone(keep_reading=keep)
            if keep:
                self._bound()
        elif ticket is None or not tries.body_sent:
            loop.cancel()  # nothing the backend could act on yet: the key is released

    def try_ended(self) -> None:
        """
        A try ended: for a client that left, the loop gets no further try
        (its wait is cancelled once it has decided).
        """
        if self.gone:
            self._parts.clock.callLater(0, self._stop_waiting)

    def _stop_waiting(self) -> None:
        loop, tries = self._loop, self._tries
        if loop is not None and tries is not None and not loop.finished and not tries.in_flight:
            loop.cancel()

    def _bound(self) -> None:
        # The answer is read for the key alone now: within the deadline's time
        # left, or --timeout without one.
        config, clock = self._parts.config, self._parts.clock
        seconds = config.timeout
        if config.deadline:
            seconds = max(0.0, self.context.started + config.deadline - clock.seconds())
        relay = self._relay
        if relay is not None and self._limit is None:
            self._limit = clock.callLater(seconds, relay.stop)

    def answered(self, response: IResponse) -> None:
        """
        A try got the answer to pass on: relay its head, then its body
        (read for the ticket alone when the client has left).
        """
        context, request, ticket = self.context, self.context.request, self._ticket
        upstream = self._router.current
        context.upstream = upstream.url
        prefix = self._parts.config.prefix_bytes
        start_response(request, response, context.request_id, upstream.base, prefix, self._public)
        self._status = response.code
        self._head_sent = not self.gone
        if ticket is not None:  # stored as the client gets it: a replay is the same answer
            ticket.answered(request.code, request.code_message, request.responseHeaders)
        self._relay = BodyRelay(request, self.done, None if ticket is None else self._captured)
        if self.gone:
            self.client_gone(None)
        response.deliverBody(self._relay)

    def _captured(self, chunk: bytes) -> None:
        ticket, relay = self._ticket, self._relay
        assert ticket is not None
        ticket.data(chunk)
        if self.gone and not ticket.storing and relay is not None:
            relay.stop()  # too large to store: no one left to read it for

    def done(self, outcome: Failure | None) -> None:
        """
        The answer's body ended (C{outcome} L{None}) or was cut short.
        """
        limit, self._limit = self._limit, None
        if limit is not None and limit.active():
            limit.cancel()
        if self._ticket is not None:
            self._ticket.finished(outcome)
        status, error_type = self._status, "" if outcome is None else "UPSTREAM_ABORTED"
        if self.gone:  # the client's leaving, never the upstream's failure (nginx: 499 before the head)
            status, error_type = (status if self._head_sent else 499), CLIENT_GONE
        tries = 0 if self._loop is None else self._loop.tries
        self._respond.log_access(self.context, status, tries, error_type, self.context.upstream)
        self._let_go()

    def failed(self, failure: Failure) -> None:
        """
        No answer to pass on: the client left, the loop gave up, or a bug.
        """
        loop, tries, upstream = self._loop, self._tries, self._router.current.url
        assert loop is not None and tries is not None  # the loop tells its end once
        if self._ticket is not None:
            self._ticket.release()
        gave_up = failure.value
        if failure.check(CancelledError):
            self._respond.log_access(self.context, 499, tries.sent, CLIENT_GONE, upstream)
        elif isinstance(gave_up, GaveUp):
            # Unknown: it may have reached the backend, and was not sent again
            # for that reason (or, with a key, the key is released).
            unknown = loop.maybe_reached and (self._ticket is not None or not gave_up.retryable)
            self._gave_up(gave_up, upstream, loop.budget_exhausted, unknown)
        else:
            self._respond.internal_error(self.context, failure, loop.tries)
        self._let_go()

    def _let_go(self) -> None:
        # The request is over.  What its loop, tries, relay and request held
        # points back at this exchange; dropped now, the whole request is
        # freed by reference counting at once instead of by a later pass of
        # the garbage collector (tests/test_no_cycles.py).
        self._loop = self._tries = self._relay = None

    def failed_late(self, failure: Failure) -> None:
        """
        L{answered} or L{failed} raised: a bug, answered with a 500 if it can be.
        """
        self._respond.internal_error(self.context, failure, 0 if self._loop is None else self._loop.tries)

    def _gave_up(self, gave_up: GaveUp, upstream: str, budget: bool, unknown: bool) -> None:
        message, extra = gave_up_message(gave_up, upstream, budget)
        if unknown:
            # The backend may have acted; it stays the authority (a key is released).
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
