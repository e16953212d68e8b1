"""
L{StatusBoard}: recent errors and rates for the status page, and the page
itself (HTML that refreshes itself; C{/status.json} has the same data).
"""

from __future__ import annotations

import html
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

#: Seconds over which rates are computed.
RATE_WINDOW = 60.0


class UpstreamView(Protocol):
    """
    What the page shows of an upstream (an L{sora2proxy._upstreams.Upstream}).
    """

    url: str
    in_flight: int

    def snapshot(self) -> dict[str, Any]:
        """Its health, ejection and health timeline, as JSON-ready data."""


class WindowCount:
    """
    How many events happened in the last L{RATE_WINDOW} seconds, kept as
    one count per second (bounded memory and constant time per event,
    whatever the request rate).
    """

    def __init__(self) -> None:
        self._seconds: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, now: float) -> None:
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])
            self.prune(now)

    def prune(self, now: float) -> None:
        oldest = now - RATE_WINDOW
        while self._seconds and self._seconds[0][0] < oldest:
            self._seconds.popleft()

    def total(self, now: float) -> int:
        self.prune(now)
        return sum(count for _, count in self._seconds)


@define
class StatusBoard:
    """
    Recent errors (with request ids) and recent request, retry and error counts.
    """

    _clock: IReactorTime
    recent_errors: deque[dict[str, Any]] = field(factory=lambda: deque(maxlen=50))
    _requests: WindowCount = field(factory=WindowCount)
    _retries: WindowCount = field(factory=WindowCount)
    _failures: WindowCount = field(factory=WindowCount)

    def request_finished(
        self, method: str, path: str, status: int, error_type: str, request_id: str, upstream: str
    ) -> None:
        now = self._clock.seconds()
        self._requests.add(now)
        if error_type or status >= 500:
            self._failures.add(now)
            self.recent_errors.appendleft(
                {
                    "time": now,
                    "requestId": request_id,
                    "method": method,
                    "path": path[:200],
                    "status": status,
                    "errorType": error_type or f"HTTP_{status}",
                    "upstream": upstream,
                }
            )

    def retried(self) -> None:
        self._retries.add(self._clock.seconds())

    def snapshot(self, upstreams: Sequence[UpstreamView], in_flight: int, draining: bool) -> dict[str, Any]:
        """
        Everything the status page shows, as JSON-ready data.
        """
        now = self._clock.seconds()
        requests = self._requests.total(now)
        return {
            "time": now,
            "draining": draining,
            "inFlight": in_flight,
            "rates": {
                "windowSeconds": RATE_WINDOW,
                "requestsPerSecond": round(requests / RATE_WINDOW, 3),
                "retriesPerSecond": round(self._retries.total(now) / RATE_WINDOW, 3),
                "errorRate": round(self._failures.total(now) / requests, 4) if requests else 0.0,
            },
            "upstreams": [u.snapshot() for u in upstreams],
            "recentErrors": list(self.recent_errors),
        }


_COLOURS = {"up": "#2e9d5b", "down": "#d2392f", "unknown": "#9aa0a6", "ejected": "#e8930c"}


def _when(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def render_status(data: dict[str, Any]) -> bytes:
    """
    The status page: each upstream's health over the last minutes as a
    timeline, recent errors with their request ids, rates; it reloads itself
    every 3 seconds.
    """
    e = html.escape
    rows = []
    for upstream in data["upstreams"]:
        health = upstream["health"]
        blocks = "".join(
            f'<span class="tick" style="background:{_COLOURS.get(status, "#9aa0a6")}" '
            f'title="{e(_when(at))} {e(status)}"></span>'
            for at, status in upstream["timeline"]
        )
        ejected = f" &middot; ejected, {upstream['cooldownLeft']:.0f} s left" if upstream["ejected"] else ""
        rows.append(
            f'<tr class="upstream" data-health="{e(health)}"><td>{e(upstream["url"])}</td>'
            f'<td><b class="health {e(health)}">{e(health)}</b>{ejected}'
            f'<div class="why">{e(upstream["reason"])}</div></td>'
            f"<td>{upstream['inFlight']}</td><td class=timeline>{blocks}</td></tr>"
        )
    errors = (
        "".join(
            f"<tr><td>{e(_when(err['time']))}</td><td><code>{e(err['requestId'])}</code></td>"
            f"<td>{e(err['method'])} {e(err['path'])}</td><td>{err['status']}</td>"
            f"<td>{e(err['errorType'])}</td></tr>"
            for err in data["recentErrors"][:20]
        )
        or '<tr><td colspan=5 class="none">no errors recently</td></tr>'
    )
    rates = data["rates"]
    state = data["state"] + (" (draining: shutting down)" if data["draining"] else "")
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=3>
<title>sora2proxy status</title>
<style>
body{{font:15px system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin-bottom:2em}}td,th{{padding:.3em .8em;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}}
.health.up{{color:#2e9d5b}}.health.down{{color:#d2392f}}.health.unknown{{color:#777}}
.why{{color:#777;font-size:.85em}}.tick{{display:inline-block;width:4px;height:18px;margin-right:1px}}
.none{{color:#777}}.rates span{{margin-right:2em}}
</style></head><body>
<h1>sora2proxy <small id=state data-state="{e(data["state"])}">{e(state)}</small></h1>
<p class=rates><span>requests/s: <b id=rps>{rates["requestsPerSecond"]}</b></span>
<span>retries/s: <b id=retries>{rates["retriesPerSecond"]}</b></span>
<span>error rate: <b id=errors>{rates["errorRate"] * 100:.1f}%</b></span>
<span>in flight: <b>{data["inFlight"]}</b></span></p>
<h2>Upstreams</h2>
<table id=upstreams><tr><th>upstream</th><th>health</th><th>in flight</th>
<th>last minutes (oldest left)</th></tr>{"".join(rows)}</table>
<h2>Recent errors</h2>
<table id=recent-errors><tr><th>time (UTC)</th><th>request id</th><th>request</th><th>status</th>
<th>errorType</th></tr>{errors}</table>
{_idempotency_html(data.get("idempotency"))}
<p class=none>Same data as JSON: <a href="status.json">status.json</a> &middot;
<a href="metrics">metrics</a></p>
</body></html>
"""
    return page.encode("utf-8")


def _idempotency_html(section: dict[str, Any] | None) -> str:
    if section is None:
        return ""
    e = html.escape
    errors = section["storeErrors"]
    problem = (
        f' <b class="health down">{errors} store errors</b> ({e(section["lastStoreError"])}); '
        + ("answering 503 (fail closed)" if section["failClosed"] else "serving without deduplication")
        if errors
        else ""
    )
    return (
        f"<h2>Idempotency-Key</h2><p id=idempotency>store <b>{e(section['store'])}</b>, "
        f"{section['entries']} entries; {section['replays']} replays, {section['conflicts']} in-flight "
        f"conflicts, {section['keyReused']} keys reused.{problem}</p>"
    )
