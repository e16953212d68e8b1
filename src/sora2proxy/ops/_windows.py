"""
What happened over the last minute, in bounded memory whatever the request
rate: L{WindowCount} (one count a second) and L{LatencyWindow} (one sparse
histogram a second, on fixed log-spaced buckets, read as p50, p95, p99).

This module imports nothing of the package.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

#: Seconds over which rates and latencies are computed.
WINDOW = 60.0

#: Each latency bucket's upper bound is this factor times its lower one: a
#: quantile read as its bucket's geometric middle is within 2.5 % of the
#: exact one.
GROWTH = 1.05
_LOG_GROWTH = math.log(GROWTH)
#: Latencies up to this many seconds share the first bucket.
FLOOR = 1e-5
#: Latencies from this many seconds on share the last bucket.
CEILING = 3600.0
_LAST = 1 + math.ceil(math.log(CEILING / FLOOR) / _LOG_GROWTH)

#: The quantiles the status page shows.
QUANTILES = (0.5, 0.95, 0.99)


class WindowCount:
    """
    How many events happened in the last C{window} seconds, kept as one
    count per second (bounded memory and constant time per event).
    """

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._seconds: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, now: float) -> None:
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])
            self.prune(now)

    def prune(self, now: float) -> None:
        oldest = now - self.window
        while self._seconds and self._seconds[0][0] < oldest:
            self._seconds.popleft()

    def total(self, now: float) -> int:
        self.prune(now)
        return sum(count for _, count in self._seconds)


def bucket_of(seconds: float) -> int:
    """
    @return: the latency bucket of C{seconds}: 0 up to L{FLOOR}, then one
        per factor L{GROWTH}, the last from L{CEILING} on.
    """
    if seconds <= FLOOR:
        return 0
    return min(_LAST, 1 + int(math.log(seconds / FLOOR) / _LOG_GROWTH))


def bucket_value(index: int) -> float:
    """
    @return: the latency a bucket stands for: the geometric middle of its bounds.
    """
    if index == 0:
        return FLOOR
    return float(FLOOR * GROWTH ** (index - 0.5))


class LatencyWindow:
    """
    Latencies of the last C{window} seconds, as one sparse histogram per
    second: memory is bounded by the window and the bucket count, never by
    the number of requests.
    """

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._seconds: deque[tuple[int, dict[int, int]]] = deque()  # oldest first

    def observe(self, now: float, seconds: float) -> None:
        """
        A latency of C{seconds}, measured at C{now}.
        """
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            buckets = self._seconds[-1][1]
        else:
            buckets = {}
            self._seconds.append((second, buckets))
            self._prune(now)
        # bucket_of(seconds), one call fewer per request
        index = 0 if seconds <= FLOOR else min(_LAST, 1 + int(math.log(seconds / FLOOR) / _LOG_GROWTH))
        buckets[index] = buckets.get(index, 0) + 1

    def _prune(self, now: float) -> None:
        oldest = now - self.window
        while self._seconds and self._seconds[0][0] < oldest:
            self._seconds.popleft()

    def quantiles(self, now: float, wanted: Sequence[float] = QUANTILES) -> tuple[int, list[float]]:
        """
        @param wanted: quantiles in increasing order.
        @return: how many latencies the window holds, and the C{wanted}
            quantiles of them in seconds (nearest rank, read from the
            buckets); no quantiles when the window is empty.
        """
        self._prune(now)
        merged: dict[int, int] = {}
        for _, buckets in self._seconds:
            for index, count in buckets.items():
                merged[index] = merged.get(index, 0) + count
        total = sum(merged.values())
        if not total:
            return 0, []
        ranks = [max(1, math.ceil(round(q * total, 9))) for q in wanted]
        values: list[float] = []
        seen = 0
        for index in sorted(merged):
            seen += merged[index]
            while len(values) < len(ranks) and ranks[len(values)] <= seen:
                values.append(bucket_value(index))
        return total, values
