"""
Rate and concurrency limits on a Clock: GCRA's burst and spacing, its bound
over any arrival sequence (a hypothesis property), bounded memory, slots
freed exactly once, the RateLimit fields, the 429's words, and a store that
cannot be reached (fail open, or 503 fail closed); the rules' parsing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy._config import ConfigError, ProxyConfig
from sora2proxy._identity import Identity
from sora2proxy._rules import path_rule, rate_rule
from sora2proxy.limits._gate import Admission, Limits, Refusal
from sora2proxy.limits._store import LimitStoreUnavailable, MemoryLimitStore

ALICE = Identity("a" * 64, False)
BOB = Identity("b" * 64, False)


def limits(clock: Clock, rates: tuple[str, ...] = (), slots: tuple[str, ...] = (), **kw: Any) -> Limits:
    return Limits.of(MemoryLimitStore(clock), clock, rates, slots, **kw)


def outcome(test: SynchronousTestCase, d: Deferred[Any] | None) -> Any:
    assert d is not None, "no rule matched"
    return test.successResultOf(d)


class GCRATests(SynchronousTestCase):
    def test_burst_then_spacing(self) -> None:
        """10/m: ten at once pass, the 11th waits 6 s, and one more passes every 6 s after that."""
        clock = Clock()
        gate = limits(clock, ("POST:/videos=10/m",))
        for _ in range(10):
            self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Admission)
        refused = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertIsInstance(refused, Refusal)
        self.assertEqual(refused.retry_after, 6)
        clock.advance(5.9)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Refusal)
        clock.advance(0.1)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Admission)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Refusal)

    def test_callers_and_methods_apart(self) -> None:
        """One caller over its limit leaves another caller, and requests no rule names, alone."""
        gate = limits(Clock(), ("POST:/videos=1/h",))
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Admission)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Refusal)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", BOB)), Admission)
        self.assertIsNone(gate.admit(b"GET", b"/videos", ALICE))
        self.assertIsNone(gate.admit(b"POST", b"/videos/1/remix", ALICE))

    def test_fields(self) -> None:
        """An accepted request carries RateLimit-Policy and RateLimit with what is left; a refused one r=0 and the wait."""
        gate = limits(Clock(), ("POST:/videos=10/m",))
        first = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertEqual(
            dict(first.fields),
            {
                b"RateLimit-Policy": b'"POST:/videos=10/m";q=10;w=60',
                b"RateLimit": b'"POST:/videos=10/m";r=9;t=6',
            },
        )
        for _ in range(9):
            last = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertEqual(dict(last.fields)[b"RateLimit"], b'"POST:/videos=10/m";r=0;t=60')
        refused = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertEqual(dict(refused.fields)[b"RateLimit"], b'"POST:/videos=10/m";r=0;t=6')
        self.assertEqual(refused.kind.error_type, "RATE_LIMITED")
        self.assertEqual(refused.kind.status, 429)
        self.assertIn("POST:/videos=10/m", refused.message)
        self.assertIn("accepted in 6 s", refused.message)

    @settings(max_examples=200, deadline=None)
    @given(
        limit=st.integers(1, 20),
        period=st.sampled_from(["s", "m", "h"]),
        gaps=st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=120),
    )
    def test_never_over_the_rate(self, limit: int, period: str, gaps: list[float]) -> None:
        """Over any arrival sequence, accepted requests never exceed N + rate x elapsed time."""
        seconds = {"s": 1, "m": 60, "h": 3600}[period]
        clock = Clock()
        gate = limits(clock, (f"POST:/x={limit}/{period}",))
        accepted = 0
        for gap in gaps:
            clock.advance(gap)
            if isinstance(outcome(self, gate.admit(b"POST", b"/x", ALICE)), Admission):
                accepted += 1
            self.assertLessEqual(accepted, limit + clock.seconds() * limit / seconds)

    def test_bounded_memory(self) -> None:
        """The table holds at most max_keys callers: callers whose credit is whole again are dropped first."""
        clock = Clock()
        store = MemoryLimitStore(clock, max_keys=3)
        gate = Limits.of(store, clock, ("POST:/x=1/s",), ())
        for n in range(3):
            outcome(self, gate.admit(b"POST", b"/x", Identity(str(n) * 64, False)))
        clock.advance(2)
        outcome(self, gate.admit(b"POST", b"/x", ALICE))
        self.assertEqual(store.size(), 1)
        for n in range(10):
            outcome(self, gate.admit(b"POST", b"/x", Identity(f"{n:064d}", False)))
            self.assertLessEqual(store.size(), 3)


class ConcurrencyTests(SynchronousTestCase):
    def test_slots(self) -> None:
        """Two in flight; the third gets 429 TOO_MANY_IN_FLIGHT; once one ends the next is accepted; a second release frees nothing."""
        gate = limits(Clock(), slots=("POST:/videos=2",))
        one = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        refused = outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertEqual((refused.kind.status, refused.kind.error_type), (429, "TOO_MANY_IN_FLIGHT"))
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", BOB)), Admission)
        self.assertEqual(gate.in_flight, {"POST:/videos=2": 3})
        one.release()
        one.release()
        self.assertEqual(gate.in_flight, {"POST:/videos=2": 2})
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Admission)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Refusal)
        self.assertEqual(gate.rate_limited, {"POST:/videos=2": 2})
        self.assertEqual(gate.callers, {ALICE.digest: 2})

    def test_rate_refusal_frees_the_slot(self) -> None:
        """A request refused by a rate rule holds no concurrency slot."""
        gate = limits(Clock(), ("POST:/videos=1/h",), ("POST:/videos=5",))
        outcome(self, gate.admit(b"POST", b"/videos", ALICE))
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", ALICE)), Refusal)
        self.assertEqual(gate.in_flight, {"POST:/videos=5": 1})


class DownStore(MemoryLimitStore):
    def spend(self, key: str, interval: int, burst: int) -> Any:
        return fail(LimitStoreUnavailable("Connection refused"))


class HangingStore(MemoryLimitStore):
    def spend(self, key: str, interval: int, burst: int) -> Any:
        return Deferred()


class StoreDownTests(SynchronousTestCase):
    def test_fail_open(self) -> None:
        """With the store down the request is served (no fields), counted and remembered."""
        clock = Clock()
        gate = Limits.of(DownStore(clock), clock, ("POST:/x=1/h",), ())
        for _ in range(3):
            admitted = outcome(self, gate.admit(b"POST", b"/x", ALICE))
            self.assertEqual((type(admitted), admitted.fields), (Admission, ()))
        self.assertEqual(gate.store_errors, 3)
        self.assertEqual(gate.last_store_error, "Connection refused")

    def test_fail_closed(self) -> None:
        """With --rate-limit-fail-closed the request gets 503 RATE_LIMIT_STORE_UNAVAILABLE."""
        clock = Clock()
        gate = Limits.of(DownStore(clock), clock, ("POST:/x=1/h",), (), fail_closed=True)
        refused = outcome(self, gate.admit(b"POST", b"/x", ALICE))
        self.assertEqual(
            (refused.kind.status, refused.kind.error_type), (503, "RATE_LIMIT_STORE_UNAVAILABLE")
        )

    def test_store_that_never_answers(self) -> None:
        """A store with no answer within 2 s counts as down: the request is served, not held, and keeps no slot."""
        clock = Clock()
        gate = Limits.of(HangingStore(clock), clock, ("POST:/x=1/s",), ("POST:/x=1",))
        checking = gate.admit(b"POST", b"/x", ALICE)
        assert checking is not None
        self.assertNoResult(checking)
        clock.advance(2)
        self.assertIsInstance(self.successResultOf(checking), Admission)
        self.assertEqual((gate.store_errors, gate.in_flight), (1, {"POST:/x=1": 0}))


class RuleTests(SynchronousTestCase):
    def test_rules(self) -> None:
        """Rules parse as written; a bad one stops start-up naming its option."""
        rule = rate_rule("post:/videos*=10/m")
        self.assertEqual((rule.limit, rule.period, rule.path.method), (10, 60.0, b"POST"))
        self.assertTrue(path_rule("POST:/videos*").matches(b"POST", b"/videos/1"))
        self.assertFalse(path_rule("POST:/videos").matches(b"POST", b"/videos/1"))
        for option, value, words in (
            ("rate_limit", ["POST:/videos=10/d"], "--rate-limit: must be"),
            ("rate_limit", ["POST:/videos=0/m"], "--rate-limit: must be"),
            ("max_concurrent", ["POST:/videos"], "--max-concurrent: must be"),
            ("rate_limit_store", "redis:/x", "--rate-limit-store: must be memory or redis"),
            ("sse_errors", "json", "--sse-errors: must be event-stream or plain"),
        ):
            with self.assertRaises(ConfigError) as caught:
                ProxyConfig(**{option: value})
            self.assertIn(words, str(caught.exception))
