"""
L{Telemetry}: what the proxy counts and remembers, for the admin port: the
Prometheus metrics (one C{CollectorRegistry} per proxy, no global state), the
in-flight count, the draining flag, and the L{StatusBoard} of the status page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from ..forward._seams import REPLAYED
from ._counts import CountedMetrics
from ._limits_view import LimitsCollector, limits_section
from ._status import StatusBoard

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HEALTH_VALUES = {"up": 1.0, "down": 0.0, "unknown": -1.0}


@define(slots=False)
class Telemetry:
    """
    Counters, gauges and histograms of one proxy, and its status board.

    @ivar in_flight: requests being handled now.
    @ivar draining: the proxy is shutting down (C{/ready} answers 503).
    """

    _clock: IReactorTime
    registry: CollectorRegistry = field(factory=lambda: CollectorRegistry(auto_describe=True))
    in_flight: int = 0
    draining: bool = False
    board: StatusBoard = field(init=False)
    sections: dict[str, Callable[[], dict[str, Any]]] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        registry = self.registry
        self.board = StatusBoard(self._clock)
        # The per-request metrics are plain counts read at scrape time (_counts).
        counted = CountedMetrics(_LATENCY_BUCKETS)
        registry.register(counted)
        self._requests = counted.counter(
            "sora2proxy_requests", "Requests answered, by method and status.", ["method", "status"]
        )
        self._request_seconds = counted.histogram(
            "sora2proxy_request_duration_seconds", "Time from request to response end.", ["method"]
        )
        self._tries = counted.counter(
            "sora2proxy_upstream_tries", "Upstream tries, by upstream and outcome.", ["upstream", "outcome"]
        )
        self._upstream_seconds = counted.histogram(
            "sora2proxy_upstream_duration_seconds", "Time from sending a try to its response headers.",
            ["upstream"],
        )  # fmt: skip
        self._errors = _Children(Counter(
            "sora2proxy_errors", "Error answers made by the proxy, by errorType.", ["error_type"],
            registry=registry,
        ))  # fmt: skip
        self._in_flight = Gauge("sora2proxy_requests_in_flight", "Requests being handled.", registry=registry)
        self._in_flight.set_function(lambda: self.in_flight)
        self._retries = _Children(Counter(
            "sora2proxy_upstream_retries", "Retries sent, by upstream.", ["upstream"], registry=registry
        ))  # fmt: skip
        self._health_seconds = _Children(Histogram(
            "sora2proxy_health_check_duration_seconds", "Health-check latency.", ["upstream"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        ))  # fmt: skip

    def watch_idempotency(self, guard: Any) -> None:
        """
        Export C{guard}'s counters (replays, conflicts, key reuse, store size
        and errors) in the metrics and on the status page.
        """
        self.registry.register(_IdempotencyCollector(guard))
        self.sections["idempotency"] = lambda: {
            "store": guard.store.description,
            "entries": guard.store.size(),
            "replays": guard.replays,
            "conflicts": guard.conflicts,
            "keyReused": guard.reused,
            "storeErrors": guard.store_errors,
            "lastStoreError": guard.last_store_error,
            "failClosed": guard.fail_closed,
        }

    def watch_limits(self, limits: Any) -> None:
        """
        Export C{limits}' refusals and slots in the metrics and on the status page.
        """
        self.registry.register(LimitsCollector(limits))
        self.sections["limits"] = lambda: limits_section(limits)

    def watch_ejections(self, ejected: Callable[[], Iterable[tuple[str, bool]]]) -> None:
        """
        Export C{sora2proxy_upstream_ejected{upstream}} (1 while ejected, else
        0), read at scrape time from C{ejected}: (upstream URL, ejected now).
        """
        self.registry.register(_EjectedCollector(ejected))

    def watch_health(self, health: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """
        Export C{sora2proxy_upstream_healthy{upstream}} (1 up, 0 down, -1
        unknown), read at scrape time from C{health}: (upstream URL, its
        health word as C{/status.json} shows it).  A refused try marks an
        upstream down between health checks, and the gauge says so at once.
        """
        self.registry.register(_HealthCollector(health))

    def request_started(self) -> None:
        """
        A request arrived.
        """
        self.in_flight += 1

    def request_finished(
        self,
        method: str,
        path: str,
        status: int,
        error_type: str,
        seconds: float,
        request_id: str,
        upstream: str,
        trace_id: str = "",
    ) -> None:
        """
        A request was answered (or its client left); C{error_type} is empty,
        the error's type, or L{REPLAYED} for a replayed stored answer (counted
        by the idempotency guard, never as an error).
        """
        self.in_flight -= 1
        label = method if method in _METHODS else "OTHER"
        self._requests.inc((label, str(status)))
        self._request_seconds.observe((label,), seconds)
        if error_type == REPLAYED:
            error_type = ""
        elif error_type:
            self._errors.of(error_type).inc()
        self.board.request_finished(method, path, status, error_type, request_id, upstream, seconds, trace_id)

    def try_finished(self, upstream: str, outcome: str, seconds: float) -> None:
        """
        A try ended: C{outcome} is C{ok}, C{5xx} or the failure's errorType.
        """
        self._tries.inc((upstream, outcome))
        self._upstream_seconds.observe((upstream,), seconds)
        self.board.try_finished(upstream, seconds)

    def retried(self, upstream: str) -> None:
        """
        A retry is sent to C{upstream}.
        """
        self._retries.of(upstream).inc()
        self.board.retried()

    def health_checked(self, upstream: str, status: str, seconds: float) -> None:
        """
        A health check ended with C{status} (C{up}, C{down}); the health
        itself is read at scrape time (L{watch_health}).
        """
        self._health_seconds.of(upstream).observe(seconds)


class _Children:
    """
    The children of a C{prometheus_client} metric with one label, each
    looked up once: C{labels()} checks its values and takes a lock on every
    call.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def of(self, value: str) -> Any:
        """
        @return: the child for label value C{value}.
        """
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child


class _HealthCollector(Collector):
    """
    Reads each upstream's health at scrape time.
    """

    def __init__(self, health: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "sora2proxy_upstream_healthy",
            "Health per upstream: 1 up, 0 down, -1 unknown.",
            labels=["upstream"],
        )
        for upstream, status in self._health():
            gauge.add_metric([upstream], _HEALTH_VALUES.get(status, -1.0))
        yield gauge


class _EjectedCollector(Collector):
    """
    Reads each upstream's ejection state at scrape time.
    """

    def __init__(self, ejected: Callable[[], Iterable[tuple[str, bool]]]) -> None:
        self._ejected = ejected

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "sora2proxy_upstream_ejected", "1 while the upstream is ejected, else 0.", labels=["upstream"]
        )
        for upstream, ejected in self._ejected():
            gauge.add_metric([upstream], 1.0 if ejected else 0.0)
        yield gauge


class _IdempotencyCollector(Collector):
    """
    Reads an idempotency guard's counters at scrape time.
    """

    def __init__(self, guard: Any) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        guard = self._guard
        for name, help_text, value in (
            ("sora2proxy_idempotent_replays", "Stored answers replayed (not errors).", guard.replays),
            ("sora2proxy_idempotency_conflicts", "409s: the key's request still in flight.", guard.conflicts),
            ("sora2proxy_idempotency_key_reused", "422s: the key reused for another request.", guard.reused),
            ("sora2proxy_idempotency_store_errors", "Store operations that failed.", guard.store_errors),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily(
            "sora2proxy_idempotency_store_entries",
            "Entries in the store (-1: unknown).",
            value=guard.store.size(),
        )
