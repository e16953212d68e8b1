"""
Per-request metrics counted in plain Python and read by Prometheus at
scrape time (a C{prometheus_client} custom collector): a request costs a
dict lookup and an addition per metric instead of a labelled child's lock.

This module imports nothing of the package.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: Prometheus' spelling of a bucket bound (C{0.25}, C{1.0}, C{+Inf}).
_le = cast(Callable[[float], str], floatToGoString)


class Histogram:
    """
    Observations counted into buckets (upper bounds, C{+Inf} implied).
    """

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """
        @return: Prometheus' C{(le, count)} pairs, cumulative, C{+Inf} last.
        """
        total = 0
        pairs = []
        for bound, count in zip([*self._bounds, float("inf")], self.counts, strict=True):
            total += count
            pairs.append((_le(bound), float(total)))
        return pairs


class LabelledCounts:
    """
    A counter per combination of label values.
    """

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        self.values[labels] = self.values.get(labels, 0) + 1


class LabelledHistograms:
    """
    A histogram per combination of label values, all with the same buckets.
    """

    __slots__ = ("_bounds", "values")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.values: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        histogram = self.values.get(labels)
        if histogram is None:
            histogram = self.values[labels] = Histogram(self._bounds)
        histogram.counts[bisect_left(self._bounds, value)] += 1  # Histogram.observe, one call fewer
        histogram.sum += value


class CountedMetrics(Collector):
    """
    Labelled counters and histograms, exposed under their names.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counters: dict[str, tuple[str, list[str], LabelledCounts]] = {}
        self._histograms: dict[str, tuple[str, list[str], LabelledHistograms]] = {}

    def counter(self, name: str, help_text: str, labels: list[str]) -> LabelledCounts:
        """
        @return: a new counter, exposed as C{name}.
        """
        counts = LabelledCounts()
        self._counters[name] = (help_text, labels, counts)
        return counts

    def histogram(self, name: str, help_text: str, labels: list[str]) -> LabelledHistograms:
        """
        @return: a new histogram with this collector's buckets, exposed as C{name}.
        """
        histograms = LabelledHistograms(self._bounds)
        self._histograms[name] = (help_text, labels, histograms)
        return histograms

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, labels, counts) in self._counters.items():
            counter = CounterMetricFamily(name, help_text, labels=labels)
            for values, count in list(counts.values.items()):
                counter.add_metric(list(values), count)
            yield counter
        for name, (help_text, labels, histograms) in self._histograms.items():
            family = HistogramMetricFamily(name, help_text, labels=labels)
            for values, histogram in list(histograms.values.items()):
                family.add_metric(list(values), histogram.cumulative(), histogram.sum)
            yield family
