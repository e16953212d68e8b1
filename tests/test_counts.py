"""
The plain-counted metrics expose exactly what prometheus_client's own
Counter and Histogram would for the same events.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.ops._counts import CountedMetrics

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


class CountedMetricsTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["GET", "POST"]),
                st.sampled_from([0.0, 0.001, 0.0005, 0.05, 1.0, 3.0, 99.0]) | st.floats(0, 20),
            ),
            max_size=30,
        )
    )
    def test_same_exposition_as_prometheus_client(self, events: list[tuple[str, float]]) -> None:
        """The same events give the same exposition text as prometheus_client's own Counter and Histogram."""
        ours, theirs = CollectorRegistry(), CollectorRegistry()
        counted = CountedMetrics(BOUNDS)
        ours.register(counted)
        counts = counted.counter("demo_requests", "Requests.", ["method"])
        histograms = counted.histogram("demo_seconds", "Seconds.", ["method"])
        prom_counter = PromCounter("demo_requests", "Requests.", ["method"], registry=theirs)
        prom_histogram = PromHistogram(
            "demo_seconds", "Seconds.", ["method"], buckets=BOUNDS, registry=theirs
        )
        for method, seconds in events:
            counts.inc((method,))
            histograms.observe((method,), seconds)
            prom_counter.labels(method).inc()
            prom_histogram.labels(method).observe(seconds)
        mine, expected = samples(ours), samples(theirs)
        self.assertEqual(mine.keys(), expected.keys())
        for key, value in expected.items():
            self.assertAlmostEqual(mine[key], value, places=9, msg=str(key))
