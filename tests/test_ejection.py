"""
Outlier ejection on a Clock: which answers count (gateway failures only), a
passing health check ending an ejection, panic mode when every upstream is
ejected, steering away from one bad upstream, and the one word that
C{/ready}, C{/status.json} and the status page share.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from sora2proxy.ops._metrics import Telemetry
from sora2proxy.resilience._ejection import Ejection
from sora2proxy.resilience._health import HealthState
from sora2proxy.resilience._upstreams import Upstream, serving_state

from .test_resource import scripted
from .test_retry_rules import UP_A, UP_B, Harness


class Backend(Resource):
    """Answers C{app} to requests, C{health} to health checks, and 500 under /boom; counts both."""

    isLeaf = True

    def __init__(self, app: int = 200, health: int = 200) -> None:
        super().__init__()
        self.app = app
        self.health = health
        self.requests = 0
        self.checks = 0

    def render(self, request: Request) -> bytes:
        if request.path.endswith(b"/health"):
            self.checks += 1
            request.setResponseCode(self.health)
            return b"{}"
        self.requests += 1
        request.setResponseCode(500 if b"/boom" in request.path else self.app)
        return b'{"from": "backend"}'


def checked(**options: Any) -> tuple[Harness, Backend]:
    """One backend behind build_proxy on a Clock, health-checked every 5 s (the first check done)."""
    backend = Backend()
    h = Harness({UP_A: backend}, health_path="/api/health", health_interval=5, **options)
    h.proxy.service.startService()
    h.flush()
    return h, backend


def code_of(h: Harness, method: str = "GET", path: str = "/api/proxy/a") -> int:
    d = h.request(method, path)
    h.flush()
    response = d.result
    h.body(response)
    code: int = response.code
    return code


class GatewayFailureTests(SynchronousTestCase):
    def test_500s_never_eject(self) -> None:
        """Ten 500 answers from one endpoint eject nothing: they are the application's answers."""
        h, backend = checked()
        upstream = h.proxy.balancer.upstreams[0]
        self.assertEqual([code_of(h, path="/api/proxy/boom") for _ in range(10)], [500] * 10)
        self.assertFalse(upstream.ejection.ejected)
        self.assertEqual(serving_state(h.proxy.balancer.upstreams, False), "serving")
        self.assertEqual(code_of(h), 200)
        self.assertEqual(backend.requests, 11)

    def test_gateway_answers_eject(self) -> None:
        """Five 502, 503 or 504 answers in a row eject the upstream; four do not."""
        for status in (502, 503, 504):
            h, backend = checked()
            backend.app = status
            ejection = h.proxy.balancer.upstreams[0].ejection
            for _ in range(4):
                self.assertEqual(code_of(h, "POST"), status)  # a POST is not retried: one try each
            self.assertFalse(ejection.ejected, status)
            code_of(h, "POST")
            self.assertTrue(ejection.ejected, status)
            self.assertEqual(ejection.cooldown_left(), 30)

    def test_500_restarts_the_count(self) -> None:
        """A 500 between gateway failures starts their count again, as in Envoy's consecutive_gateway_failure."""
        h, backend = checked()
        backend.app = 503
        ejection = h.proxy.balancer.upstreams[0].ejection
        for _ in range(4):
            code_of(h, "POST")
        code_of(h, "POST", "/api/proxy/boom")
        for _ in range(4):
            code_of(h, "POST")
        self.assertFalse(ejection.ejected)
        code_of(h, "POST")
        self.assertTrue(ejection.ejected)

    def test_refused_tries_count(self) -> None:
        """Five refused tries in a row eject the upstream (connection failures are gateway failures)."""
        h, agent = scripted([ConnectionRefusedError()] * 5, attempts=1)
        for _ in range(5):
            d = h.client.get("http://proxy.test/api/proxy/a")
            h.flush()
            self.assertEqual(self.successResultOf(d).code, 503)
        self.assertTrue(h.parts.balancer.upstreams[0].ejection.ejected)
        h.client.get("http://proxy.test/api/proxy/a")
        h.flush()
        self.assertEqual(len(agent.tries), 6, "no health checks: still sent (panic mode)")


class RecoveryTests(SynchronousTestCase):
    def test_health_check_ends_ejection(self) -> None:
        """Ejected and failing health checks: fast 503 CIRCUIT_OPEN; the first passing check lets requests through."""
        h, backend = checked()
        backend.app = 503
        for _ in range(5):
            code_of(h, "POST")
        backend.health = 503
        h.advance(5)
        d = h.request()
        response = self.successResultOf(d)
        body = json.loads(h.body(response))
        self.assertEqual((response.code, body["details"]["errorType"]), (503, "CIRCUIT_OPEN"))
        self.assertEqual(body["details"]["attempts"], 0)
        self.assertEqual(
            response.headers.getRawHeaders("retry-after"), ["5"], "one health interval, not 25 s"
        )
        self.assertEqual(serving_state(h.proxy.balancer.upstreams, False), "not ready")
        backend.app = backend.health = 200
        h.advance(4.9)
        self.assertEqual(code_of(h), 503)
        h.advance(0.1)  # the health check at t=10 passes; the cool-down would end at t=30
        self.assertFalse(h.proxy.balancer.upstreams[0].ejection.ejected)
        self.assertEqual(code_of(h), 200)
        self.assertEqual(serving_state(h.proxy.balancer.upstreams, False), "serving")

    def test_passing_check_keeps_the_backoff(self) -> None:
        """After a health check ends an ejection, the next ejection still lasts twice as long."""
        clock = Clock()
        health = HealthState(clock, UP_A)
        ejection = Ejection(clock, eject_after=2, eject_time=30)
        health.on_pass.append(ejection.health_check_passed)
        ejection.failed()
        ejection.failed()
        clock.advance(1)
        health.check_passed()
        self.assertFalse(ejection.ejected)
        self.assertEqual(ejection.periods[-1], [0, 1])
        ejection.failed()
        self.assertFalse(ejection.ejected, "the count started again")
        ejection.failed()
        self.assertEqual(ejection.cooldown_left(), 60)

    def test_lone_ejected_upstream_passing_checks_gets_traffic(self) -> None:
        """A single upstream ejected but passing its health checks still gets every request (panic mode)."""
        h, backend = checked()
        backend.app = 503
        for _ in range(5):
            code_of(h, "POST")
        self.assertTrue(h.proxy.balancer.upstreams[0].ejection.ejected)
        backend.app = 200
        self.assertEqual([code_of(h) for _ in range(3)], [200] * 3)
        self.assertEqual(serving_state(h.proxy.balancer.upstreams, False), "degraded")

    def test_lone_ejected_upstream_without_checks_gets_traffic(self) -> None:
        """Without health checks an ejected lone upstream still gets requests: nothing else could answer."""
        backend = Backend(app=503)
        h = Harness({UP_A: backend})
        for _ in range(5):
            code_of(h, "POST")
        self.assertTrue(h.proxy.balancer.upstreams[0].ejection.ejected)
        backend.app = 200
        self.assertEqual(code_of(h), 200)
        self.assertEqual(backend.requests, 6)


class SteeringTests(SynchronousTestCase):
    def test_bad_upstream_avoided_among_good_ones(self) -> None:
        """One upstream answering 503 is ejected; while it is, every request goes to the other and succeeds."""
        bad, good = Backend(app=503), Backend()
        h = Harness({UP_A: bad, UP_B: good})
        codes = [code_of(h, "POST") for _ in range(10)]  # round robin: five to each
        self.assertEqual(sorted(codes), [200] * 5 + [503] * 5)
        self.assertTrue(h.proxy.balancer.upstreams[0].ejection.ejected)
        self.assertEqual([code_of(h, "POST") for _ in range(20)], [200] * 20)
        self.assertEqual(bad.requests, 5)
        self.assertEqual(serving_state(h.proxy.balancer.upstreams, False), "degraded")
        h.advance(30)
        code_of(h, "POST")
        code_of(h, "POST")
        self.assertEqual(bad.requests, 6, "after the cool-down one probe")

    def test_request_under_way_keeps_tries(self) -> None:
        """A request whose upstream is ejected during its tries still makes all of them."""
        h, agent = scripted([ConnectionRefusedError()] * 6, eject_after=2)
        d = h.client.get("http://proxy.test/api/proxy/a")
        h.flush()
        h.advance(1)
        h.advance(2)
        self.assertEqual(self.successResultOf(d).code, 503)
        self.assertEqual(len(agent.tries), 3)


class EjectionTests(SynchronousTestCase):
    def test_cooldown_doubles_and_probe(self) -> None:
        """After the cool-down one probe goes through; its failure ejects again for twice as long."""
        clock = Clock()
        ejection = Ejection(clock, eject_after=2, eject_time=30)
        ejection.failed()
        ejection.failed()
        self.assertTrue(ejection.ejected)
        clock.advance(30)
        self.assertFalse(ejection.ejected)
        ejection.start_probe()
        self.assertTrue(ejection.ejected, "one probe at a time")
        ejection.failed()
        self.assertEqual(ejection.cooldown_left(), 60)
        clock.advance(60)
        ejection.start_probe()
        ejection.succeeded()
        self.assertFalse(ejection.ejected)
        self.assertIsNone(ejection.ejected_until)
        for _ in range(10):
            ejection.failed()
            clock.advance(ejection.cooldown_left())
            ejection.start_probe()
        self.assertLessEqual(ejection.cooldown_left(), 300)

    def test_logged(self) -> None:
        """The log says when an upstream is ejected, for how long, and when and why it is back."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        ejection = Ejection(clock, eject_after=1, upstream=UP_A)
        ejection.failed()
        ejection.health_check_passed()
        self.assertEqual(
            [formatEvent(event) for event in observer],
            [
                f"upstream {UP_A} ejected for 30 s after 1 gateway failures in a row",
                f"upstream {UP_A} is back from ejection: a health check passed",
            ],
        )

    def test_disabled(self) -> None:
        """--eject-after 0 never ejects."""
        ejection = Ejection(Clock(), eject_after=0)
        for _ in range(100):
            ejection.failed()
        self.assertFalse(ejection.ejected)


def upstream(clock: Clock, url: str, checks: bool = True) -> Upstream:
    health = HealthState(clock, url) if checks else None
    return Upstream(url, url.encode(), health, Ejection(clock, eject_after=1))


class StateTests(SynchronousTestCase):
    def test_the_three_words(self) -> None:
        """serving when all upstreams are in service, degraded when some are out or in panic, else not ready."""
        clock = Clock()
        a, b = upstream(clock, UP_A), upstream(clock, UP_B)
        self.assertEqual(serving_state([a, b], False), "serving")
        self.assertEqual(serving_state([a, b], True), "not ready", "draining")
        a.ejection.failed()
        self.assertEqual(serving_state([a, b], False), "degraded")
        assert b.health is not None
        b.health.mark_down("connection refused")
        self.assertEqual(serving_state([a, b], False), "degraded", "a is ejected but passing: panic")
        assert a.health is not None
        a.health.mark_down("connection refused")
        self.assertEqual(serving_state([a, b], False), "not ready")
        lone = upstream(clock, UP_A, checks=False)
        lone.ejection.failed()
        self.assertEqual(serving_state([lone], False), "degraded")

    def test_ejected_gauge(self) -> None:
        """sora2proxy_upstream_ejected is 1 while an upstream is ejected and 0 once it is back."""
        clock = Clock()
        a = upstream(clock, UP_A)
        telemetry = Telemetry(clock)
        telemetry.watch_ejections(lambda: [(a.url, a.ejection.ejected)])

        def gauge() -> Any:
            return telemetry.registry.get_sample_value("sora2proxy_upstream_ejected", {"upstream": UP_A})

        self.assertEqual(gauge(), 0)
        a.ejection.failed()
        self.assertEqual(gauge(), 1)
        a.ejection.health_check_passed()
        self.assertEqual(gauge(), 0)

    def test_timeline_shows_ejection(self) -> None:
        """The status timeline marks when an ejection began and the checks that passed while it lasted."""
        clock = Clock()
        a = upstream(clock, UP_A)
        assert a.health is not None
        a.health.history.append((0.0, "up"))
        clock.advance(1)
        a.ejection.failed()  # ejected at 1 until 31
        a.health.history.append((5.0, "up"))
        a.health.history.append((6.0, "down"))
        clock.advance(39)
        a.health.history.append((40.0, "up"))
        self.assertEqual(
            a.timeline(), [(0.0, "up"), (1.0, "ejected"), (5.0, "ejected"), (6.0, "down"), (40.0, "up")]
        )
