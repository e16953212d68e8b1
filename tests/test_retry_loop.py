"""
The retry loop's own contract on a Clock: how its end is told (to an outcome
or to L{RetryLoop.run}'s Deferred), cancelling it, and the upstream's count
of tries in flight given back on every way a try ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from sora2proxy import ProxyConfig
from sora2proxy.resilience._budget import RetryBudget
from sora2proxy.resilience._classify import TryFailure
from sora2proxy.resilience._retry import RetryLoop, RetryPolicy
from sora2proxy.resilience._upstreams import RequestRouter, balancer_for

from .test_resource import scripted


class Answer:
    """An upstream response with a status and no body."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.headers = Headers()

    def deliverBody(self, protocol: Any) -> None:
        pass


class Tries:
    """A router whose tries are Deferreds the test fires, recording what it is told."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.sent: list[Deferred[Any]] = []
        self.told: list[str] = []

    def send(self) -> Deferred[Any]:
        result = self.results.pop(0) if self.results else None
        d: Deferred[Any] = fail(result) if isinstance(result, Exception) else Deferred()
        self.sent.append(d)
        return d

    def succeeded(self, response: Any) -> None:
        self.told.append(f"succeeded {response.code}")

    def failed(self, failure: TryFailure) -> None:
        self.told.append("failed")

    def abandoned(self) -> None:
        self.told.append("abandoned")

    def cancelled(self) -> None:
        self.told.append("cancelled")


class Outcome:
    """Records how the loop ended; raises from answered() when told to."""

    def __init__(self, raises: bool = False) -> None:
        self.raises = raises
        self.heard: list[tuple[str, Any]] = []

    def answered(self, response: Any) -> None:
        self.heard.append(("answered", response.code))
        if self.raises:
            raise ZeroDivisionError("a bug")

    def failed(self, failure: Failure) -> None:
        self.heard.append(("failed", failure.type))

    def failed_late(self, failure: Failure) -> None:
        self.heard.append(("failed_late", failure.type))


def loop_for(clock: Clock, tries: Any, attempts: int = 3) -> RetryLoop:
    return RetryLoop(clock, RetryPolicy(attempts=attempts, backoff=1.0), tries, b"GET", False, 30.0)


class OutcomeTests(SynchronousTestCase):
    def test_answer_told_once(self) -> None:
        """The answer to pass on is told to the outcome once, and the try's timer is gone."""
        clock, tries, outcome = Clock(), Tries(), Outcome()
        loop = loop_for(clock, tries)
        loop.start(outcome)
        tries.sent[0].callback(Answer(200))
        self.assertEqual(outcome.heard, [("answered", 200)])
        self.assertEqual(tries.told, ["succeeded 200"])
        self.assertTrue(loop.finished)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bug_in_answered_is_reported(self) -> None:
        """An error raised while passing the answer on is reported to failed_late, not lost."""
        clock, tries, outcome = Clock(), Tries(), Outcome(raises=True)
        loop_for(clock, tries).start(outcome)
        tries.sent[0].callback(Answer(200))
        self.assertEqual(outcome.heard, [("answered", 200), ("failed_late", ZeroDivisionError)])

    def test_bug_in_a_try_abandons_it(self) -> None:
        """A try that fails with a bug (not a network failure) is not retried: the router is told it was abandoned."""
        clock, tries, outcome = Clock(), Tries(ZeroDivisionError("bug")), Outcome()
        loop_for(clock, tries).start(outcome)
        self.assertEqual(outcome.heard, [("failed", ZeroDivisionError)])
        self.assertEqual(tries.told, ["abandoned"])

    def test_gave_up(self) -> None:
        """Refused on every try, the loop fails once the attempts are spent."""
        clock, outcome = Clock(), Outcome()
        tries = Tries(*[ConnectionRefusedError()] * 2)
        loop_for(clock, tries, attempts=2).start(outcome)
        clock.advance(1)
        self.assertEqual(outcome.heard[0][0], "failed")
        self.assertEqual(outcome.heard[0][1].__name__, "GaveUp")
        self.assertEqual(tries.told, ["failed", "failed"])


class CancelTests(SynchronousTestCase):
    def test_cancel_during_a_try(self) -> None:
        """Cancelling cancels the try under way and fails the outcome with CancelledError, once."""
        clock, tries, outcome = Clock(), Tries(), Outcome()
        loop = loop_for(clock, tries)
        loop.start(outcome)
        loop.cancel()
        loop.cancel()
        self.assertTrue(tries.sent[0].called)
        self.assertEqual(outcome.heard, [("failed", CancelledError)])
        self.assertEqual(tries.told, ["cancelled"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_during_the_wait(self) -> None:
        """Cancelling during the wait before a retry sends no further try and leaves no timer."""
        clock, tries, outcome = Clock(), Tries(ConnectionRefusedError()), Outcome()
        loop = loop_for(clock, tries)
        loop.start(outcome)
        loop.cancel()
        clock.advance(10)
        self.assertEqual(len(tries.sent), 1)
        self.assertEqual(outcome.heard, [("failed", CancelledError)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_after_the_answer(self) -> None:
        """Once the answer is told, cancelling changes nothing."""
        clock, tries, outcome = Clock(), Tries(), Outcome()
        loop = loop_for(clock, tries)
        loop.start(outcome)
        tries.sent[0].callback(Answer(200))
        loop.cancel()
        self.assertEqual(outcome.heard, [("answered", 200)])
        self.assertEqual(tries.told, ["succeeded 200"])

    def test_run_deferred_cancellable(self) -> None:
        """run()'s Deferred is cancellable: the try under way is cancelled with it."""
        clock, tries = Clock(), Tries()
        d = loop_for(clock, tries).run()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(tries.sent[0].called)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_run_deferred_fires_with_the_answer(self) -> None:
        """run()'s Deferred fires with the answer to pass on."""
        clock, tries = Clock(), Tries()
        d = loop_for(clock, tries).run()
        answer = Answer(404)
        tries.sent[0].callback(answer)
        self.assertIs(self.successResultOf(d), answer)


class Agent:
    """An agent whose requests wait for the test to fire them."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Deferred[Any]:
        self.pending.append(Deferred())
        return self.pending[-1]


def router_for(clock: Clock) -> tuple[RequestRouter, Agent]:
    config = ProxyConfig(upstream=("http://a.test/", "http://b.test/"))
    balancer = balancer_for(config, clock, [None, None])
    agent = Agent()
    first = balancer.upstreams[0]
    return RequestRouter(balancer, agent, b"GET", b"/x", Headers(), None, first, clock=clock), agent


class InFlightTests(SynchronousTestCase):
    def in_flight(self, router: RequestRouter) -> list[int]:
        return [u.in_flight for u in router._balancer.upstreams]

    def test_answer_gives_the_try_back(self) -> None:
        """A try counts in its upstream's in-flight tries until it is answered."""
        router, agent = router_for(Clock())
        loop = loop_for(Clock(), router)
        loop.start(Outcome())
        self.assertEqual(self.in_flight(router), [1, 0])
        agent.pending[0].callback(Answer(200))
        self.assertEqual(self.in_flight(router), [0, 0])

    def test_retry_counts_on_the_next_upstream(self) -> None:
        """A failed try is given back before the retry counts on the other upstream."""
        clock = Clock()
        router, agent = router_for(clock)
        loop_for(clock, router).start(Outcome())
        agent.pending[0].errback(ConnectionRefusedError())
        self.assertEqual(self.in_flight(router), [0, 0])
        clock.advance(1)
        self.assertEqual(self.in_flight(router), [0, 1])
        agent.pending[1].callback(Answer(200))
        self.assertEqual(self.in_flight(router), [0, 0])

    def test_cancel_gives_the_try_back(self) -> None:
        """A try cancelled (its client left) is given back once, and no more on a second cancel."""
        router, _ = router_for(Clock())
        loop = loop_for(Clock(), router)
        loop.start(Outcome())
        loop.cancel()
        loop.cancel()
        router.cancelled()
        self.assertEqual(self.in_flight(router), [0, 0])

    def test_timeout_gives_the_try_back(self) -> None:
        """A try cut by --timeout is given back."""
        clock = Clock()
        router, _ = router_for(clock)
        loop_for(clock, router, attempts=1).start(Outcome())
        clock.advance(30)
        self.assertEqual(self.in_flight(router), [0, 0])

    def test_bug_gives_the_try_back(self) -> None:
        """A try that fails with a bug is given back too."""
        router, agent = router_for(Clock())
        outcome = Outcome()
        loop_for(Clock(), router).start(outcome)
        agent.pending[0].errback(ZeroDivisionError("bug"))
        self.assertEqual(self.in_flight(router), [0, 0])
        self.assertEqual(outcome.heard, [("failed", ZeroDivisionError)])


class ThroughTheProxyTests(SynchronousTestCase):
    def test_client_gone_mid_try_gives_the_try_back(self) -> None:
        """A client that leaves while its try is under way leaves no try counted in flight."""
        harness, agent = scripted([None])
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        upstream = harness.parts.balancer.upstreams[0]
        self.assertEqual(upstream.in_flight, 1)
        d.cancel()
        harness.flush()
        self.assertEqual(upstream.in_flight, 0)
        self.assertTrue(agent.pending[0].called)
        self.failureResultOf(d)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_bug_while_relaying_is_500(self) -> None:
        """A bug while passing an answer on gives the client 500 INTERNAL, and is logged."""
        harness, agent = scripted([None])
        d = harness.client.get("http://proxy.test/api/proxy/a")
        harness.flush()
        broken = Answer(200)
        broken.headers = None  # type: ignore[assignment]
        agent.pending[0].callback(broken)
        harness.flush()
        self.assertEqual(self.successResultOf(d).code, 500)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertEqual(harness.parts.balancer.upstreams[0].in_flight, 0)


class BudgetMemoryTests(SynchronousTestCase):
    def test_requests_older_than_the_window_are_forgotten(self) -> None:
        """With no retry asked for, the budget still forgets requests older than its window."""
        clock = Clock()
        budget = RetryBudget(clock, window=10.0)
        for _ in range(30):
            budget.record_request()
            clock.advance(1)
        self.assertEqual(list(budget._requests), [float(t) for t in range(20, 30)])
