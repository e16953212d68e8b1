"""
Rate and concurrency limits on a Clock: GCRA's burst and spacing, its bound
over any arrival sequence (a hypothesis property), bounded memory, slots
freed exactly once, the RateLimit fields, the 429's words, and a store that
cannot be reached (fail open, or 503 fail closed); the rules' parsing, the
options, the admin port's view, and a refused request's Idempotency-Key freed.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from sora2proxy import build_proxy
from sora2proxy._config import ConfigError, ProxyConfig
from sora2proxy._errors import ErrorKind
from sora2proxy._identity import Identity, IdentityRule
from sora2proxy._rules import path_rule, rate_rule
from sora2proxy._tap import Options
from sora2proxy.forward._messages import public_words, suggestion_for
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.idempotency._guard import IdempotencyGuard
from sora2proxy.idempotency._memory import MemoryStore
from sora2proxy.limits._gate import (
    RATE_LIMIT_STORE_UNAVAILABLE,
    RATE_LIMITED,
    TOO_MANY_IN_FLIGHT,
    Admission,
    Limits,
    Refusal,
)
from sora2proxy.limits._store import LimitStoreUnavailable, MemoryLimitStore
from sora2proxy.ops._limits_view import limits_html
from sora2proxy.ops._metrics import Telemetry

from .helpers import MemoryHarness, RecordingUpstream

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

    def test_counted_by_strongest_credential(self) -> None:
        """A token sent with a different cookie each time is one caller: the 11th is refused."""
        clock = Clock()
        gate = limits(clock, ("POST:/videos=10/m",))
        rule = IdentityRule()
        for n in range(10):
            caller = rule.identify(
                Headers({"authorization": ["Bearer stolen"], "cookie": [f"junk={n}"]}), None
            )
            self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/videos", caller)), Admission)
        caller = rule.identify(Headers({"authorization": ["Bearer stolen"], "x-api-key": ["other"]}), None)
        self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/%76ideos/", caller)), Refusal)

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

    def test_store_not_waited_on_again_at_once(self) -> None:
        """
        After a store timed out, the next requests are answered at once for
        a second (served, or 503 with fail-closed), then the store is asked again.
        """
        clock = Clock()
        for fail_closed, answer in ((False, Admission), (True, Refusal)):
            store = HangingStore(clock)
            gate = Limits.of(store, clock, ("POST:/x=1/s",), (), fail_closed=fail_closed)
            first = gate.admit(b"POST", b"/x", ALICE)
            clock.advance(2)
            self.assertIsInstance(outcome(self, first), answer)
            clock.advance(0.9)
            self.assertIsInstance(outcome(self, gate.admit(b"POST", b"/x", BOB)), answer)  # at once
            self.assertEqual(gate.store_errors, 2)
            clock.advance(0.2)
            again = gate.admit(b"POST", b"/x", BOB)
            assert again is not None
            self.assertNoResult(again)  # the store is asked again
            clock.advance(2)


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


class WiringTests(SynchronousTestCase):
    def test_options(self) -> None:
        """twistd's options reach the configuration: repeatable rules, the store, fail-closed, --sse-errors."""
        options = Options({})
        options.parseOptions(
            ["--rate-limit", "POST:/videos=10/m", "--rate-limit", "GET:/videos=100/s", "--max-concurrent",
             "POST:/videos=2", "--rate-limit-store", "redis://127.0.0.1:6379/1", "--rate-limit-fail-closed",
             "--sse-errors", "plain"]
        )  # fmt: skip
        config = options.config
        assert config is not None
        self.assertEqual(config.rate_limit, ("POST:/videos=10/m", "GET:/videos=100/s"))
        self.assertEqual(config.max_concurrent, ("POST:/videos=2",))
        self.assertEqual(config.rate_limit_store, "redis://127.0.0.1:6379/1")
        self.assertTrue(config.rate_limit_fail_closed)
        self.assertEqual(config.sse_errors, "plain")
        defaults = ProxyConfig()
        self.assertEqual((defaults.rate_limit_store, defaults.sse_errors), ("memory", "event-stream"))

    def test_no_rules_no_gate(self) -> None:
        """With no rule (the default) the proxy has no limits gate at all."""
        self.assertIsNone(build_proxy(ProxyConfig(health_path=""), Clock()).resource.parts.limits)

    def test_words(self) -> None:
        """Each refusal has a suggestion of its own, and the store's 503 has public words that say to retry."""
        config = ProxyConfig()
        generic = suggestion_for(ErrorKind("SOMETHING_NEW", 500, "New"), config)
        for kind in (RATE_LIMITED, TOO_MANY_IN_FLIGHT, RATE_LIMIT_STORE_UNAVAILABLE):
            self.assertNotEqual(suggestion_for(kind, config), generic, kind.error_type)
        message, suggestion = public_words(RATE_LIMIT_STORE_UNAVAILABLE, "m", "s", config)
        self.assertEqual(
            message, "The proxy cannot check rate limits for a moment; the request was not sent."
        )
        self.assertIn("Retry-After", suggestion)

    def test_admin_view(self) -> None:
        """Metrics count refusals by rule and slots in flight; the status page names callers by a short digest, never the token."""
        clock = Clock()
        gate = limits(clock, ("POST:/videos=1/h",), ("GET:/events=1",))
        telemetry = Telemetry(clock)
        telemetry.watch_limits(gate)
        token = IdentityRule().identify(Headers({b"x-api-key": [b"sk-secret-token"]}), None)
        outcome(self, gate.admit(b"POST", b"/videos", token))
        outcome(self, gate.admit(b"POST", b"/videos", token))
        outcome(self, gate.admit(b"GET", b"/events", token))
        text = generate_latest(telemetry.registry).decode()
        self.assertIn('sora2proxy_rate_limited_total{rule="POST:/videos=1/h"} 1.0', text)
        self.assertIn('sora2proxy_rate_limited_total{rule="GET:/events=1"} 0.0', text)
        self.assertIn('sora2proxy_limit_in_flight{rule="GET:/events=1"} 1.0', text)
        section = telemetry.sections["limits"]()
        self.assertEqual(section["topCallers"], [{"caller": token.digest[:12], "limited": 1}])
        page = limits_html(section)
        self.assertIn(token.digest[:12], page)
        self.assertNotIn("sk-secret", page)
        self.assertNotIn(token.digest, page)


class TicketTests(SynchronousTestCase):
    def test_refused_key_is_free_again(self) -> None:
        """A keyed POST refused by a rate rule frees its key: the same key later is forwarded, not 409."""
        harness = MemoryHarness(RecordingUpstream("status:201"))  # no Set-Cookie: one caller
        clock = harness.clock
        guard = IdempotencyGuard(MemoryStore(clock), clock)
        gate = limits(clock, ("POST:/videos=1/s",))  # a claim held in flight lasts 300 s
        harness.resource = ProxyResource(attrs.evolve(harness.parts, guard=guard, limits=gate))
        harness.client = StubTreq(harness.resource)

        def post(key: bytes) -> int:
            d = harness.client.post(
                "http://proxy.test/api/proxy/videos",
                b"{}",
                headers={b"Idempotency-Key": [key], b"X-Api-Key": [b"alice"]},
            )
            harness.flush()
            code: int = self.successResultOf(d).code
            return code

        self.assertEqual(post(b"first"), 201)
        self.assertEqual(post(b"second"), 429)
        clock.advance(1)
        self.assertEqual(post(b"second"), 201)


class SlotPathsTests(SynchronousTestCase):
    def harness(self, upstream: RecordingUpstream, **options: Any) -> tuple[MemoryHarness, Limits]:
        harness = MemoryHarness(upstream, attempts=1, **options)
        gate = limits(harness.clock, slots=("GET:/slow=1",))
        harness.resource = ProxyResource(attrs.evolve(harness.parts, limits=gate))
        harness.client = StubTreq(harness.resource)
        return harness, gate

    def get(self, harness: MemoryHarness) -> Deferred[Any]:
        d: Deferred[Any] = harness.client.get(
            "http://proxy.test/api/proxy/slow", headers={b"X-Api-Key": [b"a"]}
        )
        harness.flush()
        return d

    def test_timeout_frees_the_slot(self) -> None:
        """A request that times out (504) frees its slot: the next one is accepted."""
        harness, gate = self.harness(RecordingUpstream("hang"), timeout=5)
        first = self.get(harness)
        self.assertEqual(self.successResultOf(self.get(harness)).code, 429)
        harness.advance(5)
        self.assertEqual(self.successResultOf(first).code, 504)
        self.assertEqual(gate.in_flight, {"GET:/slow=1": 0})
        self.assertNoResult(self.get(harness))
        self.assertEqual(gate.in_flight, {"GET:/slow=1": 1})

    def test_error_frees_the_slot(self) -> None:
        """A request the backend fails (an error answer of the proxy) frees its slot."""
        harness, gate = self.harness(RecordingUpstream("reset"))
        self.assertEqual(self.successResultOf(self.get(harness)).code, 502)
        self.assertEqual(gate.in_flight, {"GET:/slow=1": 0})
        self.assertEqual(self.successResultOf(self.get(harness)).code, 502)
