"""
The retry policy, a pure function: which failures are retried, for which
methods, and when.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sora2proxy import IDEMPOTENT_METHODS, RetryDecision, RetryPolicy, TryFailure
from sora2proxy._errors import ECONNREFUSED, TIMEOUT, UPSTREAM_ERROR

REFUSED = TryFailure(ECONNREFUSED, False, "connection refused")
TIMED_OUT = TryFailure(TIMEOUT, True, "no answer")
RESET = TryFailure(UPSTREAM_ERROR, True, "reset")


class RetryPolicyTests(SynchronousTestCase):
    def test_backoff_schedule(self) -> None:
        """The wait before try k+1 is backoff * k: 1 s, then 2 s; no fourth try."""
        policy = RetryPolicy(attempts=3, backoff=1)
        self.assertEqual(policy.after_failure(b"GET", False, REFUSED, 1), RetryDecision(True, 1, True))
        self.assertEqual(policy.after_failure(b"GET", False, REFUSED, 2), RetryDecision(True, 2, True))
        self.assertEqual(policy.after_failure(b"GET", False, REFUSED, 3), RetryDecision(False, 0, True))

    def test_not_reached_retried_for_any_method(self) -> None:
        """A try that never reached the upstream is retried whatever the method."""
        policy = RetryPolicy(attempts=3, backoff=1)
        for method in (b"POST", b"PATCH", b"GET", b"CONNECT"):
            self.assertTrue(policy.after_failure(method, False, REFUSED, 1).retry)

    def test_reached_only_idempotent(self) -> None:
        """A try that may have reached the upstream is retried only for idempotent methods."""
        policy = RetryPolicy(attempts=3, backoff=1)
        for method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"):
            self.assertIn(method, IDEMPOTENT_METHODS)
            self.assertTrue(policy.after_failure(method, False, TIMED_OUT, 1).retry)
        for method in (b"POST", b"PATCH"):
            decision = policy.after_failure(method, False, RESET, 1)
            self.assertEqual(decision, RetryDecision(False, 0, False))

    def test_idempotency_key(self) -> None:
        """A POST with an Idempotency-Key may be retried after a timeout."""
        policy = RetryPolicy(attempts=3, backoff=1)
        self.assertTrue(policy.after_failure(b"POST", True, TIMED_OUT, 1).retry)

    def test_retry_all_methods(self) -> None:
        """--retry-all-methods retries a POST even after a timeout (the unsafe original)."""
        policy = RetryPolicy(attempts=3, backoff=1, retry_all_methods=True)
        self.assertTrue(policy.after_failure(b"POST", False, TIMED_OUT, 1).retry)

    def test_time_left(self) -> None:
        """A wait that would end past the deadline is not started."""
        policy = RetryPolicy(attempts=3, backoff=1)
        self.assertFalse(policy.after_failure(b"GET", False, REFUSED, 2, time_left=1.5).retry)
        self.assertTrue(policy.after_failure(b"GET", False, REFUSED, 2, time_left=2.5).retry)
