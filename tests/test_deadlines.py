"""
Deadlines sharing one DelayedCall (http/_deadlines): each runs at its time
(never later, at most a few microseconds earlier), once, unless disarmed;
the reactor sees one call between them all.
"""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from sora2proxy.forward._resource import ProxyResource
from sora2proxy.http._deadlines import EARLY, Deadlines

from .helpers import MemoryHarness


class DeadlinesTests(SynchronousTestCase):
    def test_runs_at_its_time(self) -> None:
        """A deadline runs when its time comes, not before."""
        clock, ran = Clock(), []
        Deadlines(clock).arm(30, lambda: ran.append(clock.seconds()))
        clock.advance(29.99)
        self.assertEqual(ran, [])
        clock.advance(0.01)
        self.assertEqual(ran, [30])

    def test_disarmed_never_runs(self) -> None:
        """A disarmed deadline never runs; the shared call stays for the next one."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)
        deadlines.disarm(deadlines.arm(30, lambda: ran.append(1)))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(60)
        self.assertEqual((ran, deadlines.armed, clock.getDelayedCalls()), ([], 0, []))

    def test_one_call_for_many(self) -> None:
        """Deadlines armed one after another with the same timeout share one DelayedCall."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)
        for _ in range(100):
            deadlines.disarm(deadlines.arm(30, lambda: ran.append("no")))
            clock.advance(0.01)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        key = deadlines.arm(30, lambda: ran.append("late"))
        clock.advance(30)
        self.assertEqual(ran, ["late"])
        deadlines.disarm(key)

    def test_later_deadline_after_the_call(self) -> None:
        """A deadline later than the shared call runs at its own time once the call has come."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)
        first = deadlines.arm(30, lambda: ran.append("first"))
        clock.advance(10)
        deadlines.arm(30, lambda: ran.append(clock.seconds()))
        deadlines.disarm(first)
        clock.advance(20)  # the shared call comes: nothing due
        self.assertEqual(ran, [])
        clock.advance(10 - 3 * EARLY)
        self.assertEqual(ran, [])
        clock.advance(3 * EARLY)
        self.assertEqual(len(ran), 1)
        self.assertTrue(40 - 2 * EARLY <= ran[0] <= 40, ran)

    def test_earlier_deadline_moves_the_call(self) -> None:
        """A deadline earlier than the shared call runs at its time, and the later one at its own."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)
        deadlines.arm(30, lambda: ran.append("thirty"))
        deadlines.arm(5, lambda: ran.append("five"))
        clock.advance(5)
        self.assertEqual(ran, ["five"])
        clock.advance(25)
        self.assertEqual(ran, ["five", "thirty"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_order_disarm_and_errors(self) -> None:
        """Deadlines due together run in the order armed; one may disarm another; one that raises is logged and the rest run."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)

        def broken() -> None:
            ran.append("broken")
            raise ValueError("a bug")

        deadlines.arm(1, lambda: ran.append("a"))
        deadlines.arm(1, broken)
        deadlines.arm(1, lambda: deadlines.disarm(skipped))
        skipped = deadlines.arm(1, lambda: ran.append("skipped"))
        deadlines.arm(1, lambda: ran.append("e"))
        clock.advance(1)
        self.assertEqual(ran, ["a", "broken", "e"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_stop(self) -> None:
        """stop() leaves no DelayedCall; a deadline armed afterwards is scheduled again."""
        clock, ran = Clock(), []
        deadlines = Deadlines(clock)
        deadlines.arm(30, lambda: ran.append(1))
        deadlines.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        deadlines.arm(5, lambda: ran.append(2))
        clock.advance(30)
        self.assertEqual(ran, [2, 1])  # the first stayed armed: the next call runs it too, in time order

    def test_without_linger(self) -> None:
        """Without linger, no DelayedCall is left once the last deadline is disarmed or has run."""
        clock = Clock()
        deadlines = Deadlines(clock, linger=False)
        deadlines.disarm(deadlines.arm(30, lambda: None))
        self.assertEqual(clock.getDelayedCalls(), [])
        deadlines.arm(1, lambda: None)
        clock.advance(1)
        self.assertEqual(clock.getDelayedCalls(), [])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        st.floats(min_value=0, max_value=2e9, allow_nan=False),
        st.lists(
            st.tuples(
                st.floats(min_value=0, max_value=50, allow_nan=False),  # armed this long after the start
                st.floats(min_value=0, max_value=60, allow_nan=False),  # its timeout
                st.one_of(st.none(), st.floats(min_value=0, max_value=70, allow_nan=False)),  # disarmed after
            ),
            max_size=12,
        ),
    )
    def test_never_late_never_twice(
        self, start: float, plan: list[tuple[float, float, float | None]]
    ) -> None:
        """Whatever the schedule and the clock's size, each deadline runs once, by its time and not much before, unless disarmed first."""
        clock = Clock()
        clock.advance(start)
        deadlines = Deadlines(clock)
        ran: dict[int, list[float]] = {}
        events: list[tuple[float, int, str, int]] = []
        for n, (at, _, disarm) in enumerate(plan):
            events.append((start + at, 0, "arm", n))
            if disarm is not None:
                events.append((start + at + disarm, 1, "disarm", n))
        events.sort()
        keys: dict[int, int] = {}
        whens: dict[int, float] = {}
        disarmed: set[int] = set()
        pending = list(events)
        while pending:
            time, _, what, n = pending.pop(0)
            clock.advance(max(0.0, time - clock.seconds()))  # advance(0) runs what is due now
            if what == "arm":
                whens[n] = clock.seconds() + plan[n][1]
                keys[n] = deadlines.arm(plan[n][1], lambda n=n: ran.setdefault(n, []).append(clock.seconds()))
                # checked at its time (plus the float noise of advancing a clock by differences)
                pending.append((whens[n] + 1e-9 * max(1.0, whens[n]), 2, "check", n))
                pending.sort()
            elif what == "disarm":
                if n not in ran:
                    disarmed.add(n)
                deadlines.disarm(keys[n])
            else:
                self.assertTrue(n in ran or n in disarmed, f"deadline {n} not run by its time {whens[n]!r}")
        for n, times in ran.items():
            self.assertEqual(len(times), 1, n)
            self.assertNotIn(n, disarmed)
            self.assertGreaterEqual(times[0], whens[n] - 2 * EARLY - 1e-9 * max(1.0, whens[n]), n)


class SlowOnly(Resource):
    """Answers at once, except /slow, which never answers."""

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        if request.path.endswith(b"/slow"):
            return NOT_DONE_YET
        return b"{}"


class SharedByTheProxyTests(SynchronousTestCase):
    def test_try_timeout_with_shared_deadlines(self) -> None:
        """With the proxy's shared deadlines, a hanging try after answered ones still times out at --timeout."""
        harness = MemoryHarness(SlowOnly(), attempts=1, timeout=30)
        deadlines = Deadlines(harness.clock)
        harness.client = StubTreq(ProxyResource(attrs.evolve(harness.parts, deadlines=deadlines)))
        for _ in range(3):
            answered = harness.client.get("http://proxy.test/api/proxy/fast")
            harness.flush()
            self.assertEqual(self.successResultOf(answered).code, 200)
            harness.advance(10)
        self.assertEqual(deadlines.armed, 0)
        slow = harness.client.get("http://proxy.test/api/proxy/slow")  # at 30: its deadline is 60
        harness.flush()
        harness.advance(29.9)
        self.assertNoResult(slow)
        harness.advance(0.1)
        self.assertEqual(self.successResultOf(slow).code, 504)
        self.assertEqual(deadlines.armed, 0)
        deadlines.stop()
