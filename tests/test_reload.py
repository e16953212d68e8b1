"""
Reloading the configuration (SIGHUP) on a Clock: the L{Reloader} applies a
valid configuration, keeps restart-only options and says so, and changes
nothing for a broken one; L{Proxy.reconfigure} swaps upstreams (health state
kept where unchanged, rebuilt where changed) and the settings new requests use.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy._config import ConfigError
from sora2proxy.ops._reload import Loaded, Reloader
from sora2proxy.resilience._health import HealthMonitor

A, B, C = "http://127.0.0.1:3101/api", "http://127.0.0.1:3102/api", "http://127.0.0.1:3103/api"


@attrs.define
class Recorded:
    """A reloadable part that records what it is given."""

    configs: list[ProxyConfig] = attrs.field(factory=list)

    def reconfigure(self, config: ProxyConfig) -> None:
        self.configs.append(config)


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(100)
        self.next: Any = None
        first = Loaded(ProxyConfig(upstream=A), ("tcp:3200",))
        self.reloader = Reloader(self.load, first, "/etc/sora2proxy.toml", self.clock)
        self.part = Recorded()
        self.reloader.register(self.part)

    def load(self) -> Loaded:
        if isinstance(self.next, Exception):
            raise self.next
        loaded: Loaded = self.next
        return loaded

    def test_applies(self) -> None:
        """A valid configuration reaches every registered part; the status page shows its time."""
        self.clock.advance(5)
        self.next = Loaded(ProxyConfig(upstream=B, attempts=5), ("tcp:3200",))
        self.assertTrue(self.reloader.reload())
        self.assertEqual(self.part.configs, [ProxyConfig(upstream=B, attempts=5)])
        self.assertEqual(self.reloader.snapshot(), {"path": "/etc/sora2proxy.toml", "loadedAt": 105})

    def test_failing_part_isolated(self) -> None:
        """A part that fails on a reload is logged; the parts after it still get the configuration."""

        class Broken:
            def reconfigure(self, config: ProxyConfig) -> None:
                raise RuntimeError("bug")

        reloader = Reloader(self.load, self.reloader.current, None, self.clock)
        reloader.register(Broken())
        reloader.register(self.part)
        self.next = Loaded(ProxyConfig(upstream=B), ("tcp:3200",))
        self.assertTrue(reloader.reload())
        self.assertEqual(self.part.configs, [ProxyConfig(upstream=B)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_broken_changes_nothing(self) -> None:
        """A broken configuration changes nothing and is one error line saying why."""
        self.clock.advance(5)
        self.next = ConfigError("--attempts", "must be a whole number of 1 or more, got 0")
        with capturedLogs() as events:
            self.assertFalse(self.reloader.reload())
        self.assertEqual(self.part.configs, [])
        self.assertEqual(self.reloader.current.config, ProxyConfig(upstream=A))
        self.assertEqual(self.reloader.snapshot()["loadedAt"], 100)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "error")
        self.assertEqual(events[0]["why"], "--attempts: must be a whole number of 1 or more, got 0")

    def test_restart_only_kept(self) -> None:
        """Listen addresses, workers and the admin port are kept, each logged as needing a restart."""
        changed = ProxyConfig(upstream=B, workers=4, admin_listen="tcp:9999", attempts=1)
        self.next = Loaded(changed, ("tcp:3300",))
        with capturedLogs() as events:
            self.assertTrue(self.reloader.reload())
        applied = self.part.configs[0]
        self.assertEqual((applied.upstreams, applied.attempts), ((B,), 1))
        self.assertEqual((applied.workers, applied.admin_listen), (1, "tcp:9901:interface=127.0.0.1"))
        self.assertEqual(self.reloader.current.listen, ("tcp:3200",))
        restart = sorted(e["option"] for e in events if e["log_level"].name == "warn")
        self.assertEqual(restart, ["--admin-listen", "--listen", "--workers"])


class FakeAgent:
    """An agent that never answers (only health checks would use it here)."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred()


class ProxyReconfigureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = ProxyConfig(upstream=(A, B), require_idempotency_key=("POST:/a",))
        self.proxy = build_proxy(self.config, self.reactor, agent=FakeAgent())
        self.proxy.service.startService()
        self.addCleanup(self.proxy.service.stopService)

    def health_monitors(self) -> list[Any]:
        """The proxy's services that are health monitors (the others: its deadlines...)."""
        return [child for child in self.proxy.service if isinstance(child, HealthMonitor)]  # type: ignore[attr-defined]

    def monitors(self) -> int:
        return len(self.health_monitors())

    def test_upstreams_swapped(self) -> None:
        """An unchanged upstream keeps its state, a removed one's checks stop, an added one's start."""
        a, b = self.proxy.balancer.upstreams
        a.ejection.failed()
        self.assertEqual(self.monitors(), 2)
        self.proxy.reconfigure(attrs.evolve(self.config, upstream=(A, C)))
        kept, added = self.proxy.balancer.upstreams
        self.assertIs(kept, a)
        self.assertEqual(added.url, C)
        self.assertNotIn(b, self.proxy.balancer.upstreams)
        self.assertEqual(self.monitors(), 2)
        states = [monitor.state for monitor in self.health_monitors()]
        self.assertNotIn(b.health, states)
        self.assertIn(a.health, states)

    def test_changed_checks_rebuild(self) -> None:
        """Changed health-check settings rebuild every upstream's health state."""
        a = self.proxy.balancer.upstreams[0]
        self.proxy.reconfigure(attrs.evolve(self.config, health_interval=1.0))
        new_a, new_b = self.proxy.balancer.upstreams
        self.assertIsNot(new_a, a)
        self.assertEqual((new_a.url, new_b.url), (A, B))
        self.assertEqual([m._interval for m in self.health_monitors()], [1.0, 1.0])

    def test_settings_for_new_requests(self) -> None:
        """Retries, timeouts, budget, balance and Idempotency-Key rules are the new ones."""
        changed = attrs.evolve(
            self.config,
            attempts=7,
            timeout=3.0,
            retry_budget=0.5,
            balance="least-in-flight",
            require_idempotency_key=("POST:/b",),
        )
        self.proxy.reconfigure(changed)
        parts = self.proxy.resource.parts  # type: ignore[attr-defined]
        self.assertEqual((parts.config.attempts, parts.config.timeout), (7, 3.0))
        self.assertEqual(self.proxy.resource._policy.attempts, 7)  # type: ignore[attr-defined]
        self.assertEqual(parts.budget.fraction, 0.5)
        self.assertTrue(self.proxy.balancer.least_in_flight)
        assert parts.guard is not None
        self.assertEqual(parts.guard.required, ("POST:/b",))

    def test_rate_limit_rules(self) -> None:
        """Rate and concurrency rules come, change and go with a reload; one gate serves them all."""
        parts = lambda: self.proxy.resource.parts  # type: ignore[attr-defined]  # noqa: E731
        self.assertIsNone(parts().limits)
        self.proxy.reconfigure(attrs.evolve(self.config, rate_limit=("POST:/videos=10/m",)))
        gate = parts().limits
        assert gate is not None
        self.assertEqual([rule.text for rule in gate.rates], ["POST:/videos=10/m"])
        self.proxy.reconfigure(
            attrs.evolve(self.config, rate_limit=("POST:/videos=2/m",), max_concurrent=("GET:/e=1",))
        )
        self.assertIs(parts().limits, gate)
        self.assertEqual([rule.text for rule in gate.rates], ["POST:/videos=2/m"])
        self.assertEqual([rule.text for rule in gate.concurrency], ["GET:/e=1"])
        self.proxy.reconfigure(self.config)
        self.assertIsNone(parts().limits)
        self.proxy.reconfigure(attrs.evolve(self.config, max_concurrent=("GET:/e=3",)))
        self.assertIs(parts().limits, gate)


class StatusPageTests(SynchronousTestCase):
    def test_last_good_configuration_shown(self) -> None:
        """The status page shows the last good configuration's file and when it was loaded."""
        from twisted.web.test.requesthelper import DummyRequest

        from sora2proxy.ops._admin import Admin

        reactor = MemoryReactorClock()
        reactor.advance(3600 + 120 + 5)  # 01:02:05 UTC
        proxy = build_proxy(ProxyConfig(upstream=A), reactor, agent=FakeAgent())
        loaded = Loaded(ProxyConfig(upstream=A), ("tcp:3200",))
        reloader = Reloader(lambda: loaded, loaded, "/etc/sora2proxy.toml", reactor)
        proxy.telemetry.sections["config"] = reloader.snapshot
        page = Admin(proxy.telemetry, proxy.balancer).status(DummyRequest([b"status"])).decode()
        self.assertIn("Configuration: <code>/etc/sora2proxy.toml</code>, loaded 01:02:05 (UTC)", page)
        reactor.advance(60)
        reloader.reload()
        page = Admin(proxy.telemetry, proxy.balancer).status(DummyRequest([b"status"])).decode()
        self.assertIn("loaded 01:03:05 (UTC)", page)


class SiteReloadTests(SynchronousTestCase):
    def test_new_connections_get_new_limits(self) -> None:
        """After a reload, new connections get the new head and idle timeouts and body limit."""
        from twisted.internet.address import IPv4Address

        from sora2proxy.http._site import ProxySite

        site = ProxySite(None, ProxyConfig(upstream=A), reactor=MemoryReactorClock())
        site.reconfigure(ProxyConfig(upstream=A, header_timeout=2.0, idle_timeout=7.0, max_body=10))
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertEqual((channel.header_timeout, channel.timeOut), (2.0, 7.0))
        self.assertEqual(site.config.max_body, 10)
