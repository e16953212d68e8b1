"""
The rate and concurrency limits (L{sora2proxy.limits._gate.Limits}) on the
admin port: C{sora2proxy_rate_limited_total{rule}} and
C{sora2proxy_limit_in_flight{rule}} read at scrape time, and the status
page's section with the most limited callers, each shown by a short digest
of its identity, never a token.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Callers listed on the status page.
TOP_CALLERS = 10


class LimitsCollector(Collector):
    """
    Reads a L{Limits<sora2proxy.limits._gate.Limits>}' counts at scrape time.
    """

    def __init__(self, limits: Any) -> None:
        self._limits = limits

    def collect(self) -> Iterator[Metric]:
        limits = self._limits
        refused = CounterMetricFamily(
            "sora2proxy_rate_limited", "Requests refused 429 by a rate or concurrency rule.", labels=["rule"]
        )
        for rule, count in sorted(limits.rate_limited.items()):
            refused.add_metric([rule], count)
        yield refused
        slots = GaugeMetricFamily(
            "sora2proxy_limit_in_flight", "Requests holding a --max-concurrent slot now.", labels=["rule"]
        )
        for rule, count in sorted(limits.in_flight.items()):
            slots.add_metric([rule], count)
        yield slots
        yield CounterMetricFamily(
            "sora2proxy_rate_limit_store_errors",
            "Rate-limit store operations that failed.",
            value=limits.store_errors,
        )


def limits_section(limits: Any) -> dict[str, Any]:
    """
    The limits as C{/status.json} shows them.
    """
    top = sorted(limits.callers.items(), key=lambda item: (-item[1], item[0]))[:TOP_CALLERS]
    return {
        "store": limits.store.description,
        "limited": dict(limits.rate_limited),
        "inFlight": dict(limits.in_flight),
        "topCallers": [{"caller": digest[:12], "limited": count} for digest, count in top],
        "storeErrors": limits.store_errors,
        "lastStoreError": limits.last_store_error,
        "failClosed": limits.fail_closed,
    }


def limits_html(section: dict[str, Any] | None) -> str:
    """
    The status page's section of the limits, empty without rules.
    """
    if section is None:
        return ""
    e = html.escape
    rules = "".join(
        f"<tr><td><code>{e(rule)}</code></td><td>{n}</td><td>{section['inFlight'].get(rule, '')}</td></tr>"
        for rule, n in section["limited"].items()
    )
    callers = ", ".join(f"<code>{e(c['caller'])}</code> ({c['limited']})" for c in section["topCallers"])
    errors = section["storeErrors"]
    problem = (
        f'<p><b class="health down">{errors} store errors</b> ({e(section["lastStoreError"])}); '
        + ("answering 503 (fail closed)" if section["failClosed"] else "serving without limits")
        + "</p>"
        if errors
        else ""
    )
    return (
        f"<h2>Rate and concurrency limits</h2><div id=limits><p>store <b>{e(section['store'])}</b></p>"
        f"<table><tr><th>rule</th><th>refused</th><th>in flight</th></tr>{rules}</table>"
        f"<p>Most limited callers: {callers or '<span class=none>none</span>'}</p>{problem}</div>"
    )
