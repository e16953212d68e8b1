"""
The status board on a Clock: errors grouped by type with their latest
example, query strings kept out, latency quantiles over the last minute
(checked against an exact computation on independent data) in bounded
memory, the header's state word, and numbers rounded for people.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.ops._status import (
    MAX_ERROR_TYPES,
    StatusBoard,
    duration,
    per_second,
    percent,
    render_status,
)
from sora2proxy.ops._windows import CEILING, FLOOR, LatencyWindow, bucket_of, bucket_value

#: A quantile read from a bucket is its geometric middle: within sqrt(1.05) - 1 of the exact value.
TOLERANCE = 0.025


def exact(values: list[float], q: float) -> float:
    """The nearest-rank quantile, by sorting (as a textbook defines it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[rank - 1]


class FakeUpstream:
    def __init__(self, url: str, health: str = "up", ejected: bool = False) -> None:
        self.url = url
        self.in_flight = 0
        self._health = health
        self._ejected = ejected

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url, "health": self._health, "reason": "", "ejected": self._ejected,
            "cooldownLeft": 0.0, "inFlight": 0, "timeline": [],
        }  # fmt: skip


class ErrorGroupTests(SynchronousTestCase):
    def test_grouped_with_latest(self) -> None:
        """50 identical errors make one row with a count of 50 and the latest request id; other types keep theirs."""
        clock = Clock()
        board = StatusBoard(clock)
        board.request_finished("GET", "/api/proxy/a", 404, "NOT_FOUND", "nf-1", "u")
        for i in range(50):
            clock.advance(1)
            board.request_finished("POST", f"/api/proxy/jobs/{i}", 503, "CIRCUIT_OPEN", f"co-{i}", "u")
        clock.advance(1)
        board.request_finished("GET", "/api/proxy/b", 500, "", "h-1", "u")
        groups = board.snapshot([], 0, False)["errors"]["groups"]
        self.assertEqual([g["errorType"] for g in groups], ["HTTP_500", "CIRCUIT_OPEN", "NOT_FOUND"])
        self.assertEqual([(g["recent"], g["total"]) for g in groups], [(1, 1), (50, 50), (1, 1)])
        self.assertEqual(groups[1]["latest"]["requestId"], "co-49")
        self.assertEqual(groups[1]["latest"]["path"], "/api/proxy/jobs/49")
        page = render_status({**board.snapshot([], 0, False), "state": "serving"}).decode()
        self.assertEqual(page.count('class="error-group"'), 3)

    def test_recent_window_and_bound(self) -> None:
        """A type's recent count empties after 5 minutes while its total stays; the types kept are bounded."""
        clock = Clock()
        board = StatusBoard(clock)
        board.request_finished("GET", "/a", 502, "UPSTREAM_ERROR", "r1", "u")
        clock.advance(301)
        [group] = board.snapshot([], 0, False)["errors"]["groups"]
        self.assertEqual((group["recent"], group["total"]), (0, 1))
        for status in range(500, 700):
            clock.advance(0.01)
            board.request_finished("GET", "/a", status, "", "r", "u")
        groups = board.snapshot([], 0, False)["errors"]["groups"]
        self.assertEqual(len(groups), MAX_ERROR_TYPES)
        self.assertEqual(groups[0]["errorType"], "HTTP_699")

    def test_query_strings_dropped(self) -> None:
        """A token in a query string never reaches the status data or the page."""
        board = StatusBoard(Clock())
        board.request_finished("GET", "/api/proxy/x?access_token=s3cret&b=2", 504, "TIMEOUT", "r", "u")
        data = board.snapshot([], 0, False)
        self.assertEqual(data["errors"]["groups"][0]["latest"]["path"], "/api/proxy/x")
        self.assertNotIn("s3cret", repr(data))
        self.assertNotIn(b"s3cret", render_status({**data, "state": "serving"}))


class LatencyTests(SynchronousTestCase):
    def assertNear(self, estimate: float, want: float) -> None:
        self.assertLessEqual(abs(estimate - want) / want, TOLERANCE, (estimate, want))

    def test_against_exact(self) -> None:
        """p50, p95 and p99 of 20,000 log-normal latencies are within 2.5 % of the exact quantiles."""
        rng = random.Random(20261129)
        values = [rng.lognormvariate(math.log(0.05), 1.2) for _ in range(20000)]
        window = LatencyWindow()
        for i, value in enumerate(values):
            window.observe(1000 + i * 0.002, value)  # all within 40 s
        count, quantiles = window.quantiles(1040)
        self.assertEqual(count, 20000)
        for q, estimate in zip((0.5, 0.95, 0.99), quantiles, strict=True):
            want = exact(values, q)
            self.assertLessEqual(abs(estimate - want) / want, TOLERANCE, (q, estimate, want))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(min_value=1e-4, max_value=120.0), min_size=1, max_size=300))
    def test_any_data(self, values: list[float]) -> None:
        """Whatever the latencies, each quantile read is within 2.5 % of the exact nearest-rank one."""
        window = LatencyWindow()
        for value in values:
            window.observe(5.0, value)
        count, quantiles = window.quantiles(5.5)
        self.assertEqual(count, len(values))
        for q, estimate in zip((0.5, 0.95, 0.99), quantiles, strict=True):
            want = exact(values, q)
            self.assertLessEqual(abs(estimate - want) / want, TOLERANCE)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([0.0, FLOOR, FLOOR * 1.05, CEILING, CEILING * 2]) | st.floats(0, 1e5))
    def test_bucket_as_bucket_of_says(self, seconds: float) -> None:
        """A latency is read back as the middle of the bucket bucket_of names, floor and ceiling included."""
        window = LatencyWindow()
        window.observe(5.0, seconds)
        self.assertEqual(window.quantiles(5.5), (1, [bucket_value(bucket_of(seconds))] * 3))

    def test_last_minute_only_bounded(self) -> None:
        """Only the last 60 s count, and 100,000 requests over two minutes keep at most 61 small histograms."""
        window = LatencyWindow()
        for i in range(100000):
            window.observe(i * 0.0012, 0.010 if i < 50000 else 2.0)
        self.assertLessEqual(len(window._seconds), 61)
        self.assertLessEqual(max(len(buckets) for _, buckets in window._seconds), 2)
        count, (p50, _, _) = window.quantiles(120)
        self.assertEqual(count, len([i for i in range(100000) if int(i * 0.0012) >= 60]))
        self.assertNear(p50, 2.0)
        self.assertEqual(window.quantiles(500), (0, []))

    def test_board_overall_and_per_upstream(self) -> None:
        """The board reads request latencies overall and try latencies per upstream, in milliseconds."""
        clock = Clock()
        board = StatusBoard(clock)
        for ms in range(1, 101):
            board.request_finished("GET", "/a", 200, "", "r", "u", ms / 1000)
            board.try_finished("http://a/api", ms / 2000)
        latency = board.snapshot([], 0, False)["latency"]
        self.assertEqual(latency["windowSeconds"], 60)
        self.assertEqual(latency["requests"]["count"], 100)
        self.assertNear(latency["requests"]["p50Ms"], 50)
        self.assertNear(latency["requests"]["p99Ms"], 99)
        self.assertNear(latency["upstreams"]["http://a/api"]["p95Ms"], 47.5)
        clock.advance(120)
        self.assertEqual(board.snapshot([], 0, False)["latency"]["requests"]["p50Ms"], None)


class PageTests(SynchronousTestCase):
    def test_numbers_for_people(self) -> None:
        """Rates, percentages and latencies are rounded to what a person reads."""
        self.assertEqual(
            [per_second(x) for x in (0, 4.017, 0.0167, 123.4, 12.26)], ["0", "4.0", "0.02", "123", "12"]
        )
        self.assertEqual([percent(x) for x in (0, 0.004, 0.0417, 0.25)], ["0%", "0.40%", "4.2%", "25%"])
        self.assertEqual(
            [duration(x) for x in (None, 3.21, 230.4, 1250, 42000)],
            ["-", "3.2 ms", "230 ms", "1.25 s", "42.0 s"],
        )

    def test_windows_named(self) -> None:
        """Every rate on the page says its window, and the header shows the state word."""
        clock = Clock()
        board = StatusBoard(clock)
        for _ in range(241):
            board.request_finished("GET", "/a", 200, "", "r", "u", 0.02)
        board.retried()
        page = render_status(
            {**board.snapshot([FakeUpstream("http://a/api")], 0, False), "state": "serving"}
        ).decode()
        self.assertIn("<b id=rps>4.0/s</b> over the last 60 s (241 in all)", page)
        self.assertIn("<b id=retries>0.02/s</b> over the last 60 s", page)
        self.assertIn("<b id=errors>0%</b> of requests over the last 60 s", page)
        self.assertIn("Latency over the last 60 s", page)
        self.assertIn('<small id=state data-state="serving"\nclass="state serving">serving<', page)
