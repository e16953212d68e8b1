"""
Retries: L{RetryPolicy} decides (pure: no I/O, no clock), L{RetryLoop} waits
and sends (the only place that schedules a retry).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from ..http._deadlines import Deadlines
from ._budget import RetryBudget
from ._classify import TryFailure, TryTimedOut, classify, parse_retry_after
from ._discard import DiscardedBody

#: RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

#: Upstream answers that mean "try again": a gateway's own failures.
RETRIED_STATUSES = frozenset({502, 503, 504})


@frozen
class RetryDecision:
    """
    What to do after a try.

    @ivar retry: send another try.
    @ivar delay: seconds to wait before it.
    @ivar retryable: whether the outcome allowed a retry at all (C{False}
        when the request may have reached the upstream and is not safe to
        repeat); reported as C{details.retryable}.
    """

    retry: bool
    delay: float
    retryable: bool


@frozen
class RetryPolicy:
    """
    The retry rules, as a pure function of the request and the outcome.

    @ivar attempts: total tries, the first included.
    @ivar backoff: the wait before try k+1 is C{backoff * k} (capped at
        C{max_backoff}; with C{jitter}, uniform in [0, that]).
    @ivar retry_all_methods: repeat any request after any failure, even one
        that may already have been acted on (the unsafe, original behaviour).
    @ivar max_retry_after: the longest upstream C{Retry-After} honoured by
        waiting; a longer one is passed to the client at once.
    """

    attempts: int
    backoff: float
    retry_all_methods: bool = False
    jitter: bool = False
    max_backoff: float = 30.0
    max_retry_after: float = 10.0

    def may_resend(self, method: bytes, has_idempotency_key: bool, reached_upstream: bool) -> bool:
        """
        @return: whether sending this request again is safe.
        """
        if not reached_upstream or self.retry_all_methods:
            return True
        return method in IDEMPOTENT_METHODS or has_idempotency_key

    def backoff_delay(self, tries_made: int, random: float = 1.0) -> float:
        """
        @param random: a number in [0, 1), used with jitter.
        @return: the wait before try C{tries_made + 1}.
        """
        delay = min(self.max_backoff, self.backoff * tries_made)
        return delay * random if self.jitter else delay

    def after_failure(
        self,
        method: bytes,
        has_idempotency_key: bool,
        failure: TryFailure,
        tries_made: int,
        time_left: float | None = None,
        random: float = 1.0,
    ) -> RetryDecision:
        """
        Decide whether try C{tries_made + 1} happens after a failed try, and when.

        @param time_left: seconds left before the request's deadline, or
            L{None} without a deadline.
        """
        retryable = not failure.permanent and self.may_resend(
            method, has_idempotency_key, failure.reached_upstream
        )
        return self._schedule(retryable, tries_made, self.backoff_delay(tries_made, random), time_left)

    def after_response(
        self,
        method: bytes,
        has_idempotency_key: bool,
        status: int,
        retry_after: float | None,
        tries_made: int,
        time_left: float | None = None,
        random: float = 1.0,
    ) -> RetryDecision:
        """
        Decide whether an upstream answer is passed through or retried:
        502, 503 and 504 are retried (after C{Retry-After} when the upstream
        sent one), and so is a 429 with C{Retry-After}; everything else, and
        a C{Retry-After} longer than C{max_retry_after}, is passed through.
        """
        if status not in RETRIED_STATUSES and not (status == 429 and retry_after is not None):
            return PASS_ON
        retryable = self.may_resend(method, has_idempotency_key, True)
        if status in (429, 503) and retry_after is not None:
            if retry_after > self.max_retry_after:
                return RetryDecision(False, 0.0, retryable)
            delay = retry_after
        else:
            delay = self.backoff_delay(tries_made, random)
        return self._schedule(retryable, tries_made, delay, time_left)

    def _schedule(
        self, retryable: bool, tries_made: int, delay: float, time_left: float | None
    ) -> RetryDecision:
        if not retryable or tries_made >= self.attempts:
            return RetryDecision(False, 0.0, retryable)
        if time_left is not None and delay >= time_left:
            return RetryDecision(False, 0.0, retryable)
        return RetryDecision(True, delay, retryable)


#: The decision for an answer that is passed on (most of them): no retry.
PASS_ON = RetryDecision(False, 0.0, False)


class TryRouter(Protocol):
    """
    Sends a request's tries and hears their outcomes (see L{RequestRouter}).
    """

    def send(self) -> Deferred[IResponse]:
        """Send the next try."""

    def succeeded(self, response: IResponse) -> None:
        """The latest try got a response."""

    def failed(self, failure: TryFailure) -> None:
        """The latest try failed."""

    def abandoned(self) -> None:
        """The latest try ended with no outcome to record (a bug)."""

    def cancelled(self) -> None:
        """The request was abandoned."""


class LoopOutcome(Protocol):
    """
    Hears how a L{RetryLoop} ended, once (see L{RetryLoop.start}).
    """

    def answered(self, response: IResponse) -> None:
        """A try got the answer to pass on."""

    def failed(self, failure: Failure) -> None:
        """No answer: L{GaveUp}, L{CancelledError}, or a bug."""

    def failed_late(self, failure: Failure) -> None:
        """L{answered} or L{failed} raised C{failure} (a bug): reported, not lost."""


@define
class _ToDeferred:
    """A loop's outcome fired into the Deferred that L{RetryLoop.run} returns."""

    result: Deferred[IResponse]

    def answered(self, response: IResponse) -> None:
        self.result.callback(response)

    def failed(self, failure: Failure) -> None:
        self.result.errback(failure)

    failed_late = failed  # never called: a Deferred catches its callbacks' errors


class GaveUp(Exception):
    """
    The retry loop ended without a response.

    @ivar failure: the last try's failure.
    @ivar tries: how many tries were made.
    @ivar retryable: whether the last failure allowed another try.
    """

    def __init__(self, failure: TryFailure, tries: int, retryable: bool) -> None:
        super().__init__(failure, tries, retryable)
        self.failure = failure
        self.tries = tries
        self.retryable = retryable


@define
class RetryLoop:
    """
    Sends one request's tries, one at a time, until one gets an answer to
    pass on or the policy gives up.  L{run}'s Deferred is cancellable: that
    cancels the try in flight or the wait before the next (as L{cancel}
    does for L{start}).
    """

    _clock: IReactorTime
    _policy: RetryPolicy
    _router: TryRouter
    _method: bytes
    _has_idempotency_key: bool
    _timeout: float
    _deadline: float | None = None
    _budget: RetryBudget | None = None
    _random: Callable[[], float] = field(default=lambda: 1.0)
    #: where the tries' timeouts are armed (the proxy's, shared); by default
    #: the loop's own, which holds no DelayedCall once no try is timed
    _deadlines: Deadlines | None = field(default=None, kw_only=True)
    tries: int = 0
    budget_exhausted: bool = False
    maybe_reached: bool = False
    #: The loop has ended (its outcome told), or was cancelled.
    finished: bool = field(default=False, init=False)
    _pending: Deferred[None] | None = field(default=None, init=False)
    _wait: IDelayedCall | None = field(default=None, init=False)
    _outcome: LoopOutcome = field(init=False)  # these three: set before read (no default to store)
    _try_timer: int | None = field(init=False)  # the try's deadline key
    _timed_out: float | None = field(init=False)

    def run(self) -> Deferred[IResponse]:
        """
        Start the first try.

        @return: fires with the response to pass on, or fails with L{GaveUp},
            or with the failure of a bug (not a network failure).
        """
        result: Deferred[IResponse] = Deferred(lambda _: self.cancel())
        self.start(_ToDeferred(result))
        return result

    def start(self, outcome: LoopOutcome) -> None:
        """
        Start the first try; C{outcome} hears how the loop ends, as L{run}'s
        Deferred would (without a Deferred's cost).
        """
        self._outcome = outcome
        if self._deadlines is None:
            self._deadlines = Deadlines(self._clock, linger=False)
        self._start_try()

    def cancel(self) -> None:
        """
        Give up (the client left): the try in flight or the wait is
        cancelled, and the outcome fails with L{CancelledError}; nothing
        once the loop has ended.
        """
        if self.finished:
            return
        self.finished = True
        self._router.cancelled()
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        if self._pending is not None:
            self._pending.cancel()
        self._tell(Failure(CancelledError()))

    def _time_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._clock.seconds()

    def _start_try(self) -> None:
        self._wait = None
        self.tries += 1
        timeout = self._timeout
        if self._deadline is not None:
            timeout = max(0.0, min(timeout, self._deadline - self._clock.seconds()))
        try:
            sent = self._router.send()
        except Exception:
            self._finish(Failure())
            return
        # A deadline, not a DelayedCall per try (Deferred.addTimeout costs three times as much).
        self._timed_out = None
        assert self._deadlines is not None  # start() made one
        self._try_timer = self._deadlines.arm(timeout, partial(self._time_out, sent, timeout))
        pending = sent.addCallbacks(self._answered, self._failed)
        if not pending.called:
            self._pending = pending

    def _time_out(self, sent: Deferred[IResponse], seconds: float) -> None:
        self._try_timer = None
        self._timed_out = seconds
        sent.cancel()

    def _stop_try_timer(self) -> None:
        key, self._try_timer = self._try_timer, None
        if key is not None and self._deadlines is not None:
            self._deadlines.disarm(key)

    def _retry_allowed(self, wanted: bool) -> bool:
        if not wanted:
            return False
        if self._budget is not None and not self._budget.allow_retry():
            self.budget_exhausted = True
            return False
        return True

    def _answered(self, response: IResponse) -> None:
        self._stop_try_timer()  # never one that ran: _time_out forgets it
        self._pending = None
        self.maybe_reached = True
        self._router.succeeded(response)
        # The policy passes on every answer under 400 (most): no decision to ask for.
        if response.code < 400 or not self._retrying(response):
            self._finish(response)

    def _retrying(self, response: IResponse) -> bool:
        retry_after = parse_retry_after(response.headers.getRawHeaders(b"retry-after"), self._clock.seconds())
        decision = self._policy.after_response(
            self._method,
            self._has_idempotency_key,
            response.code,
            retry_after,
            self.tries,
            self._time_left(),
            self._random(),
        )
        if decision is PASS_ON or not self._retry_allowed(decision.retry):
            return False
        response.deliverBody(DiscardedBody())
        self._wait = self._clock.callLater(decision.delay, self._start_try)
        return True

    def _failed(self, failure: Failure) -> None:
        self._stop_try_timer()
        self._pending = None
        if self.finished:  # cancelled: the router knows
            return
        if self._timed_out is not None:
            failure = Failure(TryTimedOut(failure, self._timed_out))
        try_failure = classify(failure)
        if try_failure is None:
            self._router.abandoned()
            self._finish(failure)
            return
        self._router.failed(try_failure)
        self.maybe_reached = self.maybe_reached or try_failure.reached_upstream
        decision = self._policy.after_failure(
            self._method,
            self._has_idempotency_key,
            try_failure,
            self.tries,
            self._time_left(),
            self._random(),
        )
        if not self._retry_allowed(decision.retry):
            self._finish(Failure(GaveUp(try_failure, self.tries, decision.retryable)))
            return
        self._wait = self._clock.callLater(decision.delay, self._start_try)

    def _finish(self, result: IResponse | Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self._tell(result)

    def _tell(self, result: IResponse | Failure) -> None:
        outcome = self._outcome
        try:
            if isinstance(result, Failure):
                outcome.failed(result)
            else:
                outcome.answered(result)
        except Exception:
            outcome.failed_late(Failure())
