"""
Retries: L{RetryPolicy} decides (pure, no I/O, no clock), L{RetryLoop} waits
and sends (the only place that schedules a retry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from ._classify import TryFailure, TryTimedOut, classify

#: RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


@frozen
class RetryDecision:
    """
    What to do after a failed try.

    @ivar retry: send another try.
    @ivar delay: seconds to wait before it.
    @ivar retryable: whether the failure allowed a retry at all (C{False}
        when the request may have reached the upstream and is not safe to
        repeat); reported as C{details.retryable}.
    """

    retry: bool
    delay: float
    retryable: bool


@frozen
class RetryPolicy:
    """
    The retry rules, as a pure function of the request and the failure.

    @ivar attempts: total tries, the first included.
    @ivar backoff: the wait before try k+1 is C{backoff * k}.
    @ivar retry_all_methods: repeat any request after any failure, even one
        that may already have been acted on (the unsafe, original behaviour).
    """

    attempts: int
    backoff: float
    retry_all_methods: bool = False

    def may_resend(self, method: bytes, has_idempotency_key: bool, failure: TryFailure) -> bool:
        """
        @return: whether sending this request again after C{failure} is safe.
        """
        if not failure.reached_upstream or self.retry_all_methods:
            return True
        return method in IDEMPOTENT_METHODS or has_idempotency_key

    def after_failure(
        self,
        method: bytes,
        has_idempotency_key: bool,
        failure: TryFailure,
        tries_made: int,
        time_left: float | None = None,
    ) -> RetryDecision:
        """
        Decide whether try C{tries_made + 1} happens, and when.

        @param time_left: seconds left before the request's deadline, or
            L{None} without a deadline.
        """
        retryable = self.may_resend(method, has_idempotency_key, failure)
        delay = self.backoff * tries_made
        if not retryable or tries_made >= self.attempts:
            return RetryDecision(False, 0.0, retryable)
        if time_left is not None and delay >= time_left:
            return RetryDecision(False, 0.0, retryable)
        return RetryDecision(True, delay, retryable)


class TryObserver(Protocol):
    """
    Told the outcome of every try (the health state listens).
    """

    def try_succeeded(self) -> None:
        """A try got a response."""

    def try_failed(self, failure: TryFailure) -> None:
        """A try failed."""


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


def _timed_out(result: object, seconds: float) -> object:
    if isinstance(result, Failure):
        return Failure(TryTimedOut(result, seconds))
    return result


@define
class RetryLoop:
    """
    Sends one request's tries, one at a time, until one gets a response or
    the policy gives up.  L{run}'s Deferred is cancellable: that cancels the
    try in flight or the wait before the next.
    """

    _clock: IReactorTime
    _policy: RetryPolicy
    _send: Callable[[], Deferred[IResponse]]
    _method: bytes
    _has_idempotency_key: bool
    _timeout: float
    _observer: TryObserver | None = None
    _deadline: float | None = None
    tries: int = 0
    _pending: Deferred[None] | None = field(default=None, init=False)
    _wait: IDelayedCall | None = field(default=None, init=False)
    _result: Deferred[IResponse] | None = field(default=None, init=False)
    _cancelled: bool = field(default=False, init=False)

    def run(self) -> Deferred[IResponse]:
        """
        Start the first try.

        @return: fires with the first response, or fails with L{GaveUp}, or
            with the failure of a bug (not a network failure).
        """
        self._result = Deferred(self._cancel)
        self._start_try()
        return self._result

    def _cancel(self, _: Deferred[IResponse]) -> None:
        self._cancelled = True
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        if self._pending is not None:
            self._pending.cancel()

    def _time_left(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - self._clock.seconds()

    def _start_try(self) -> None:
        self._wait = None
        self.tries += 1
        timeout = self._timeout
        left = self._time_left()
        if left is not None:
            timeout = max(0.0, min(timeout, left))
        try:
            sent = self._send()
        except Exception:
            self._finish(Failure())
            return
        sent.addTimeout(timeout, self._clock, onTimeoutCancel=_timed_out)
        pending = sent.addCallbacks(self._answered, self._failed)
        if not pending.called:
            self._pending = pending

    def _answered(self, response: IResponse) -> None:
        self._pending = None
        if self._observer is not None:
            self._observer.try_succeeded()
        self._finish(response)

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self._cancelled:
            return
        try_failure = classify(failure)
        if try_failure is None:
            self._finish(failure)
            return
        if self._observer is not None:
            self._observer.try_failed(try_failure)
        decision = self._policy.after_failure(
            self._method, self._has_idempotency_key, try_failure, self.tries, self._time_left()
        )
        if not decision.retry:
            self._finish(Failure(GaveUp(try_failure, self.tries, decision.retryable)))
            return
        self._wait = self._clock.callLater(decision.delay, self._start_try)

    def _finish(self, result: IResponse | Failure) -> None:
        assert self._result is not None
        if self._cancelled or self._result.called:
            return
        if isinstance(result, Failure):
            self._result.errback(result)
        else:
            self._result.callback(result)
