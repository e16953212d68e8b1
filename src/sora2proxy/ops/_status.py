"""
L{StatusBoard}: errors grouped by type, rates and latencies for the status
page, and the page itself (HTML that refreshes itself; C{/status.json} has
the same data).  Memory is bounded: counts and latencies are kept a second
at a time over a fixed window (L{sora2proxy.ops._windows}), errors as one group
per type with its latest example.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from ._limits_view import limits_html
from ._windows import WINDOW, LatencyWindow, WindowCount

#: Seconds over which rates and latencies are computed.
RATE_WINDOW = WINDOW
#: Seconds over which errors count as recent.
ERROR_WINDOW = 300.0
#: Most error types remembered (the least recently seen goes first).
MAX_ERROR_TYPES = 64


class UpstreamView(Protocol):
    """
    What the page shows of an upstream (an L{sora2proxy.resilience._upstreams.Upstream}).
    """

    url: str
    in_flight: int

    def snapshot(self) -> dict[str, Any]:
        """Its health, ejection and health timeline, as JSON-ready data."""


@define
class ErrorGroup:
    """
    The errors of one type: how many, and the latest one.
    """

    error_type: str
    recent: WindowCount = field(factory=lambda: WindowCount(ERROR_WINDOW))
    total: int = 0
    latest: dict[str, Any] = field(factory=dict)


def _latency(window: LatencyWindow, now: float) -> dict[str, Any]:
    count, (p50, p95, p99) = _padded(window.quantiles(now))
    return {"count": count, "p50Ms": _ms(p50), "p95Ms": _ms(p95), "p99Ms": _ms(p99)}


def _padded(result: tuple[int, list[float]]) -> tuple[int, list[float | None]]:
    count, values = result
    return count, list(values) if values else [None, None, None]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@define
class StatusBoard:
    """
    Errors by type (with the latest request id of each), request, retry
    and error counts, and latencies overall and per upstream.
    """

    _clock: IReactorTime
    _groups: dict[str, ErrorGroup] = field(factory=dict)
    _retries: WindowCount = field(factory=WindowCount)
    _failures: WindowCount = field(factory=WindowCount)
    _latency: LatencyWindow = field(factory=LatencyWindow)
    _upstream_latency: dict[str, LatencyWindow] = field(factory=dict)

    def request_finished(
        self,
        method: str,
        path: str,
        status: int,
        error_type: str,
        request_id: str,
        upstream: str,
        seconds: float = 0.0,
        trace_id: str = "",
    ) -> None:
        """
        A request was answered in C{seconds}; C{error_type} is empty unless
        it failed.  The path is kept without its query (it may hold tokens).
        """
        now = self._clock.seconds()
        self._latency.observe(now, seconds)  # also the count of requests in the window
        if error_type or status >= 500:
            self._failures.add(now)
            latest = {
                "time": now,
                "requestId": request_id,
                "traceId": trace_id,
                "method": method,
                "path": path.partition("?")[0][:200],
                "status": status,
                "upstream": upstream,
            }
            self._group(error_type or f"HTTP_{status}", now, latest)

    def _group(self, error_type: str, now: float, latest: dict[str, Any]) -> None:
        group = self._groups.get(error_type)
        if group is None:
            if len(self._groups) >= MAX_ERROR_TYPES:
                stale = min(self._groups.values(), key=lambda g: float(g.latest["time"]))
                del self._groups[stale.error_type]
            group = self._groups[error_type] = ErrorGroup(error_type)
        group.recent.add(now)
        group.total += 1
        group.latest = latest

    def try_finished(self, upstream: str, seconds: float) -> None:
        """
        A try to C{upstream} got its response headers (or failed) in C{seconds}.
        """
        window = self._upstream_latency.get(upstream)
        if window is None:
            window = self._upstream_latency[upstream] = LatencyWindow()
        window.observe(self._clock.seconds(), seconds)

    def retried(self) -> None:
        self._retries.add(self._clock.seconds())

    def snapshot(self, upstreams: Sequence[UpstreamView], in_flight: int, draining: bool) -> dict[str, Any]:
        """
        Everything the status page shows, as JSON-ready data.
        """
        now = self._clock.seconds()
        latency = _latency(self._latency, now)
        requests = latency["count"]
        retries = self._retries.total(now)
        failures = self._failures.total(now)
        shown = [u.snapshot() for u in upstreams]
        groups = sorted(self._groups.values(), key=lambda g: float(g.latest["time"]), reverse=True)
        return {
            "time": now,
            "draining": draining,
            "inFlight": in_flight,
            "rates": {
                "windowSeconds": RATE_WINDOW,
                "requests": requests,
                "retries": retries,
                "failures": failures,
                "requestsPerSecond": round(requests / RATE_WINDOW, 2),
                "retriesPerSecond": round(retries / RATE_WINDOW, 2),
                "errorRate": round(failures / requests, 4) if requests else 0.0,
            },
            "latency": {
                "windowSeconds": RATE_WINDOW,
                "requests": latency,
                "upstreams": {url: _latency(w, now) for url, w in self._upstream_latency.items()},
            },
            "upstreams": shown,
            "errors": {
                "windowSeconds": ERROR_WINDOW,
                "groups": [
                    {
                        "errorType": g.error_type,
                        "recent": g.recent.total(now),
                        "total": g.total,
                        "latest": g.latest,
                    }
                    for g in groups
                ],
            },
        }


_COLOURS = {"up": "#2e9d5b", "down": "#d2392f", "unknown": "#9aa0a6", "ejected": "#e8930c"}


def _when(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def per_second(rate: float) -> str:
    """
    A rate for people: C{4.017} is C{4.0}, C{0.0167} is C{0.02}, C{123.4} is C{123}.
    """
    if rate == 0:
        return "0"
    if rate < 0.1:
        return f"{rate:.2f}"
    return f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"


def percent(fraction: float) -> str:
    """
    A fraction as a percentage for people: C{0.004} is C{0.40%}, C{0.25} is C{25%}.
    """
    value = fraction * 100
    if value == 0:
        return "0%"
    if value < 1:
        return f"{value:.2f}%"
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def duration(ms: float | None) -> str:
    """
    A latency for people: C{3.2 ms}, C{230 ms}, C{1.25 s}, C{42.0 s}; C{-} for none.
    """
    if ms is None:
        return "-"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s" if ms < 10000 else f"{ms / 1000:.1f} s"


def render_status(data: dict[str, Any]) -> bytes:
    """
    The status page: the proxy's state, rates and latencies over the last
    minute, each upstream's health over the last minutes as a timeline,
    errors grouped by type; it reloads itself every 3 seconds.
    """
    e = html.escape
    state = data["state"]
    draining = " &middot; draining (shutting down)" if data["draining"] else ""
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=3>
<title>sora2proxy: {e(state)}</title>
<style>
body{{font:15px system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin-bottom:2em}}td,th{{padding:.3em .8em;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}}th{{white-space:nowrap}}td.n,th.n{{text-align:right}}
.health.up{{color:#2e9d5b}}.health.down{{color:#d2392f}}.health.unknown{{color:#777}}
.state{{padding:.1em .5em;border-radius:4px;color:#fff;background:#2e9d5b}}
.state.degraded{{background:#c77c02}}.state.not-ready{{background:#d2392f}}
.why{{color:#777;font-size:.85em}}.tick{{display:inline-block;width:4px;height:18px;margin-right:1px}}
.none{{color:#777}}.rates span{{margin-right:2em}}
</style></head><body>
<h1>sora2proxy <small id=state data-state="{e(state)}"
class="state {e(state.replace(" ", "-"))}">{e(state)}</small>{draining}</h1>
{_rates_html(data)}
<h2>Upstreams</h2>
{_upstreams_html(data)}
<h2>Latency over the last {data["latency"]["windowSeconds"]:.0f} s</h2>
{_latency_html(data)}
<h2>Errors by type</h2>
{_errors_html(data)}
{_idempotency_html(data.get("idempotency"))}
{limits_html(data.get("limits"))}
{_config_html(data.get("config"))}
<p class=none>Same data as JSON: <a href="status.json">status.json</a> &middot;
<a href="metrics">metrics</a></p>
</body></html>
"""
    return page.encode("utf-8")


def _rates_html(data: dict[str, Any]) -> str:
    rates = data["rates"]
    window = f"over the last {rates['windowSeconds']:.0f} s"
    return (
        f"<p class=rates><span>requests: <b id=rps>{per_second(rates['requestsPerSecond'])}/s</b> {window} "
        f"({rates['requests']} in all)</span>"
        f"<span>retries: <b id=retries>{per_second(rates['retriesPerSecond'])}/s</b> {window}</span>"
        f"<span>errors: <b id=errors>{percent(rates['errorRate'])}</b> of requests {window}</span>"
        f"<span>in flight now: <b>{data['inFlight']}</b></span></p>"
    )


def _upstreams_html(data: dict[str, Any]) -> str:
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
    return (
        "<table id=upstreams><tr><th>upstream</th><th>health</th><th>in flight</th>"
        f"<th>last minutes (oldest left)</th></tr>{''.join(rows)}</table>"
    )


def _latency_html(data: dict[str, Any]) -> str:
    e = html.escape
    latency = data["latency"]
    rows = [("all requests (arrival to last byte)", "requests", latency["requests"])]
    for url, figures in latency["upstreams"].items():
        rows.append((f"tries to {url} (sent to response headers)", "upstream", figures))
    cells = "".join(
        f'<tr class="{kind}"><td>{e(name)}</td><td class=n>{figures["count"]}</td>'
        f"<td class=n>{duration(figures['p50Ms'])}</td><td class=n>{duration(figures['p95Ms'])}</td>"
        f"<td class=n>{duration(figures['p99Ms'])}</td></tr>"
        for name, kind, figures in rows
    )
    return (
        "<table id=latency><tr><th>measured</th><th class=n>count</th><th class=n>p50</th>"
        f"<th class=n>p95</th><th class=n>p99</th></tr>{cells}</table>"
    )


def _errors_html(data: dict[str, Any]) -> str:
    e = html.escape
    errors = data["errors"]
    window = f"{errors['windowSeconds'] / 60:.0f} min"
    rows = "".join(
        f'<tr class="error-group"><td><b>{e(g["errorType"])}</b></td><td class=n>{g["recent"]}</td>'
        f"<td class=n>{g['total']}</td><td>{e(_when(g['latest']['time']))}</td>"
        f"<td>{g['latest']['status']} &middot; {e(g['latest']['method'])} {e(g['latest']['path'])}"
        f'<div class="why">request id <code>{e(g["latest"]["requestId"])}</code>'
        f"{_trace(g['latest'].get('traceId', ''))}"
        f"{_via(g['latest']['upstream'])}</div></td></tr>"
        for g in errors["groups"][:20]
    )
    if not rows:
        rows = '<tr><td colspan=5 class="none">no errors since the proxy started</td></tr>'
    return (
        f"<table id=errors-by-type><tr><th>errorType</th><th class=n>last {window}</th>"
        f"<th class=n>since start</th><th>latest (UTC)</th><th>latest example</th></tr>{rows}</table>"
    )


def _trace(trace_id: str) -> str:
    return f" &middot; trace <code>{html.escape(trace_id)}</code>" if trace_id else ""


def _via(upstream: str) -> str:
    return f" &middot; {html.escape(upstream)}" if upstream else " &middot; not sent upstream"


def _config_html(section: dict[str, Any] | None) -> str:
    if section is None:
        return ""
    path = html.escape(section["path"] or "the command line (no --config)")
    when = html.escape(_when(section["loadedAt"]))
    return f"<p id=config>Configuration: <code>{path}</code>, loaded {when} (UTC)</p>"


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
