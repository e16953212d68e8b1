"""
The words of the proxy's own errors: which error a request gets when no
upstream may be tried, and what a request that gave up is told.
"""

from __future__ import annotations

import math
from typing import Any

from ._config import ProxyConfig
from ._errors import (
    CIRCUIT_OPEN,
    ECONNREFUSED,
    HEALTH_CHECK_FAILED,
    TIMEOUT,
    UPSTREAM_TLS_ERROR,
    ErrorKind,
)
from ._retry import GaveUp
from ._upstreams import Balancer

TLS_SUGGESTION = (
    "Check the upstream's certificate, or trust its CA with --upstream-ca FILE "
    "(the proxy never falls back to an unverified connection)."
)


def unavailable(balancer: Balancer, config: ProxyConfig) -> tuple[ErrorKind, str, float]:
    """
    No upstream may be tried: each one fails its health checks, and all
    are ejected too (C{CIRCUIT_OPEN}) or not (C{HEALTH_CHECK_FAILED}).  A
    passing health check ends both, so C{Retry-After} is at most one
    health interval.

    @return: the kind, the message and the C{Retry-After} seconds.
    """
    upstreams = balancer.upstreams
    names = ", ".join(u.url for u in upstreams)
    reasons = "; ".join(
        f"{u.url}: {u.health.reason}" for u in upstreams if u.health is not None and u.health.down
    )
    if all(u.ejection.ejected for u in upstreams):
        left = min(u.ejection.cooldown_left() for u in upstreams)
        return (
            CIRCUIT_OPEN,
            f"The API backend at {names} failed {config.eject_after} times in a row and is failing its "
            f"health check ({reasons}); it is ejected until a health check passes (every "
            f"{config.health_interval:g} s), for {math.ceil(left)} s at most; the request was not sent.",
            min(left, config.health_interval),
        )
    return (
        HEALTH_CHECK_FAILED,
        f"The API backend at {names} is failing its health check ({reasons}); the request was not sent.",
        config.health_interval,
    )


def gave_up_message(
    gave_up: GaveUp, upstream: str, budget_exhausted: bool
) -> tuple[str, dict[str, Any], str | None]:
    """
    @return: the message, the extra C{details} and a suggestion of its own
        (or L{None} for the configured one) for a request that gave up.
    """
    kind = gave_up.failure.kind
    tries = gave_up.tries
    reason = gave_up.failure.reason
    if kind is ECONNREFUSED:
        message = f"The API backend at {upstream} refused the connection ({tries} attempts)."
    elif kind is TIMEOUT:
        message = f"The API backend at {upstream} timed out: {reason} ({tries} attempts)."
    else:
        message = f"The API backend at {upstream} failed: {reason} ({tries} attempts)."
    extra: dict[str, Any] = {"retryable": gave_up.retryable, "reason": reason}
    if budget_exhausted:
        extra["retryBudgetExhausted"] = True
    suggestion = TLS_SUGGESTION if kind is UPSTREAM_TLS_ERROR else None
    return message, extra, suggestion
