"""
The health monitor on a Clock: its schedule, what counts as healthy, and a
loop that survives every kind of failing check.
"""

from __future__ import annotations

from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from zope.interface import implementer

from sora2proxy import Health, HealthMonitor, HealthState, ProxyConfig
from sora2proxy.forward._resource import ProxyResource

from .helpers import RecordingUpstream, parts_for

HEALTH_URL = b"http://backend.test:3101/api/health"


def monitor_for(agent: Any, clock: Clock, interval: float = 5, timeout: float = 3) -> HealthMonitor:
    state = HealthState(clock, "http://backend.test:3101/api")
    return HealthMonitor(state, clock, agent, HEALTH_URL, interval, timeout)


@implementer(IAgent)
class BrokenAgent:
    """An agent whose every request fails at once, or hangs."""

    def __init__(self, outcome: Exception | None) -> None:
        self.outcome = outcome
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        if self.outcome is None:
            return Deferred()
        return fail(self.outcome)


class HealthMonitorTests(SynchronousTestCase):
    def test_schedule_and_transitions(self) -> None:
        """The first check runs at start, then every interval; 2xx is up, 503 is down."""
        clock = Clock()
        upstream = RecordingUpstream()
        agent = RequestTraversalAgent(upstream)
        monitor = monitor_for(agent, clock)
        self.assertEqual(monitor.state.status, Health.UNKNOWN)
        monitor.startService()
        agent.flush()
        self.assertEqual(upstream.health_checks, 1)
        self.assertEqual(monitor.state.status, Health.UP)
        upstream.health = "down"
        clock.advance(4.9)
        agent.flush()
        self.assertEqual(upstream.health_checks, 1)
        clock.advance(0.1)
        agent.flush()
        self.assertEqual(upstream.health_checks, 2)
        self.assertEqual(monitor.state.status, Health.DOWN)
        self.assertEqual(monitor.state.reason, "health check answered HTTP 503")
        self.assertEqual(monitor.state.changed_at, 5)
        upstream.health = "ok"
        clock.advance(5)
        agent.flush()
        self.assertEqual(monitor.state.status, Health.UP)
        monitor.stopService()
        clock.advance(50)
        self.assertEqual(upstream.health_checks, 3, "no check after stop")

    def test_refused_check_keeps_looping(self) -> None:
        """A refused check marks the upstream down and the loop goes on."""
        clock = Clock()
        agent = BrokenAgent(ConnectionRefusedError())
        monitor = monitor_for(agent, clock)
        monitor.startService()
        self.assertEqual(monitor.state.status, Health.DOWN)
        self.assertEqual(monitor.state.reason, "connection refused")
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(agent.calls, 3)
        monitor.stopService()

    def test_unexpected_error_keeps_looping(self) -> None:
        """Even an unexpected error in a check leaves the loop running, logged."""
        clock = Clock()
        agent = BrokenAgent(RuntimeError("surprise"))
        monitor = monitor_for(agent, clock)
        monitor.startService()
        clock.advance(5)
        self.assertEqual(agent.calls, 2)
        self.assertEqual(monitor.state.status, Health.DOWN)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        monitor.stopService()

    def test_hanging_check_times_out(self) -> None:
        """A check with no answer within --health-timeout marks the upstream down."""
        clock = Clock()
        agent = BrokenAgent(None)
        monitor = monitor_for(agent, clock, interval=5, timeout=3)
        monitor.startService()
        clock.advance(2.9)
        self.assertEqual(monitor.state.status, Health.UNKNOWN)
        clock.advance(0.1)
        self.assertEqual(monitor.state.status, Health.DOWN)
        self.assertIn("timed out after 3 s", monitor.state.reason)
        clock.advance(2)
        self.assertEqual(agent.calls, 2)
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_result_reused_within_interval(self) -> None:
        """Requests within one interval reuse the last health result: no check per request."""
        clock = Clock()
        upstream = RecordingUpstream()
        agent = RequestTraversalAgent(upstream)
        monitor = monitor_for(agent, clock)
        config = ProxyConfig(upstream="http://backend.test:3101/api")
        client = StubTreq(ProxyResource(parts_for(config, clock, agent, monitor.state)))
        monitor.startService()
        agent.flush()
        for _ in range(10):
            d = client.get("http://proxy.test/api/proxy/a")
            agent.flush()
            client.flush()
            self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(upstream.health_checks, 1)
        self.assertEqual(len(upstream.seen), 10)
        monitor.stopService()

    def test_only_passing_checks_are_heard(self) -> None:
        """on_pass hears each passing check, never a failing one nor a proxied try's answer."""
        clock = Clock()
        upstream = RecordingUpstream()
        agent = RequestTraversalAgent(upstream)
        monitor = monitor_for(agent, clock)
        heard: list[float] = []
        monitor.state.on_pass.append(lambda: heard.append(clock.seconds()))
        monitor.startService()
        agent.flush()
        upstream.health = "down"
        clock.advance(5)
        agent.flush()
        monitor.state.try_succeeded()
        upstream.health = "ok"
        clock.advance(5)
        agent.flush()
        self.assertEqual(heard, [0, 10])
        monitor.stopService()


class PassiveHealthTests(SynchronousTestCase):
    def test_answered_try_marks_up(self) -> None:
        """A proxied try's answer marks an unknown or down upstream up, with no reason left."""
        clock = Clock()
        state = HealthState(clock, "http://u/api")
        state.try_succeeded()
        self.assertEqual((state.status, state.reason), (Health.UP, ""))
        clock.advance(3)
        state.mark_down("connection refused")
        clock.advance(4)
        state.try_succeeded()
        state.try_succeeded()
        self.assertEqual((state.status, state.reason, state.changed_at), (Health.UP, "", 7))
        self.assertEqual(list(state.history), [(0, "up"), (3, "down"), (7, "up")])

    def test_not_passive_kept(self) -> None:
        """With tries not counted, a proxied try's answer leaves a down upstream down."""
        state = HealthState(Clock(), "http://u/api", passive=False)
        state.mark_down("HTTP 503")
        state.try_succeeded()
        self.assertEqual((state.status, state.reason), (Health.DOWN, "HTTP 503"))
