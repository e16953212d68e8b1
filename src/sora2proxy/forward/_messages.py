"""
The words of the proxy's own errors: which error a request gets when no
upstream may be tried, what a request that gave up is told, the suggestion
of each error type, the words a client outside the proxy's host reads
instead, and what an error says of a C{--spawn} child that exited.

The C{--spawn} children are known here only as L{SpawnedChild}, a
C{Protocol} that L{sora2proxy.ops._spawn.SpawnedCommand} fits: nothing of the
process supervision is imported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import frozen

from .._config import ProxyConfig
from .._errors import (
    CIRCUIT_OPEN,
    ECONNREFUSED,
    HEALTH_CHECK_FAILED,
    TIMEOUT,
    ErrorKind,
)
from ..idempotency._guard import MAX_KEY, MISSING_SUGGESTION
from ..resilience._retry import GaveUp
from ..resilience._upstreams import Balancer

TLS_SUGGESTION = (
    "Check the upstream's certificate, or trust its CA with --upstream-ca FILE "
    "(the proxy never falls back to an unverified connection)."
)

#: The "backend not reachable" errors: the only ones whose suggestion is C{--suggestion}.
UNREACHABLE = frozenset({ECONNREFUSED.error_type, HEALTH_CHECK_FAILED.error_type, CIRCUIT_OPEN.error_type})

#: A child that exited this recently is named in an unreachable error even once restarted.
RECENT_EXIT = 60.0

_REPORT = "if it keeps happening, report the request id to the service's operators."

#: What a client outside the proxy's host reads for a 5xx error: the
#: proxy's message and suggestion name internal URLs and settings.
_PUBLIC: dict[str, tuple[str, str]] = {
    "ECONNREFUSED": (
        "The API backend refused the connection; the request was not processed.",
        "The service is unavailable for a moment: retry after the Retry-After seconds.",
    ),
    "HEALTH_CHECK_FAILED": (
        "The API backend is failing its health checks; the request was not sent.",
        "The service is unavailable for a moment: retry after the Retry-After seconds.",
    ),
    "CIRCUIT_OPEN": (
        "The API backend is failing and is held out of service; the request was not sent.",
        "The service is unavailable for a moment: retry after the Retry-After seconds.",
    ),
    "TIMEOUT": ("The API backend did not answer in time.", f"Retry later; {_REPORT}"),
    "UPSTREAM_ERROR": ("The API backend failed to answer.", f"Retry later; {_REPORT}"),
    "UPSTREAM_TLS_ERROR": ("The proxy could not reach the API backend securely.", f"Retry later; {_REPORT}"),
    "INTERNAL": (
        "The proxy failed while handling this request; this is a bug in the proxy.",
        "Report the request id to the service's operators.",
    ),
    "OVERLOADED": (
        "The proxy is handling as many requests as it may; the request was not sent.",
        "Retry after the Retry-After seconds.",
    ),
    "IDEMPOTENCY_STORE_FULL": (
        "Too many requests with an Idempotency-Key are in progress; the request was not sent.",
        "Retry after the Retry-After seconds, with the same Idempotency-Key.",
    ),
    "IDEMPOTENCY_STORE_UNAVAILABLE": (
        "The proxy cannot check Idempotency-Keys for a moment; the request was not sent.",
        "Retry after the Retry-After seconds, with the same Idempotency-Key.",
    ),
    "RATE_LIMIT_STORE_UNAVAILABLE": (
        "The proxy cannot check rate limits for a moment; the request was not sent.",
        "Retry after the Retry-After seconds.",
    ),
}
_PUBLIC_DEFAULT = f"Retry later; {_REPORT}"


def suggestion_for(kind: ErrorKind, config: ProxyConfig) -> str:
    """
    The suggestion of an error of C{kind} for the operator (in the log, and
    for loopback clients): C{--suggestion} only for the unreachable family.
    """
    name = kind.error_type
    if name in UNREACHABLE:
        return config.suggestion
    prefix = config.prefix.rstrip("/")
    return {
        "TIMEOUT": f"The backend took longer than --timeout ({config.timeout:g} s) to send its response "
        "headers: find the slow endpoint in the backend's log, or raise --timeout (and --deadline) "
        "if it is slow by design.",
        "UPSTREAM_ERROR": "The backend reset the connection or sent an answer that is not valid HTTP: "
        "look in the backend's log at this time (details.reason says what broke).",
        "UPSTREAM_TLS_ERROR": TLS_SUGGESTION,
        "NOT_FOUND": f"Only paths under {prefix}/ are forwarded: send {prefix}/<path>.",
        "BAD_REQUEST": "Send the path as plain segments: no dot segments, backslashes, control bytes "
        "or spaces; percent-encode other bytes.",
        "BODY_TOO_LARGE": f"Send at most {config.max_body} bytes, or raise the proxy's --max-body.",
        "INTERNAL": "This is a bug in the proxy: its log has the traceback under this request id "
        "(--dev puts it in the body); please report it.",
        "OVERLOADED": "Retry in a moment; raise --max-inflight if the proxy has CPU to spare.",
        "NOT_IMPLEMENTED": "Serve the proxy with build_proxy or twistd sora2proxy: they set up "
        "WebSocket tunnelling.",
        # A 400 about the request itself: say what to change in it, never to retry.
        "IDEMPOTENCY_KEY_INVALID": f"Send exactly one Idempotency-Key header of 1 to {MAX_KEY} printable "
        'ASCII characters, unique per operation, e.g. -H "Idempotency-Key: $(uuidgen)".',
        "IDEMPOTENCY_KEY_MISSING": MISSING_SUGGESTION,
        "IDEMPOTENCY_KEY_REUSED": "Use a new Idempotency-Key for a new operation; reuse a key only to "
        "retry the same method, path, query and body.",
        "IDEMPOTENCY_IN_FLIGHT": "Retry after the Retry-After seconds with the same Idempotency-Key: "
        "you will get the first request's answer.",
        "IDEMPOTENCY_STORE_FULL": "Retry after the Retry-After seconds with the same Idempotency-Key, "
        "when fewer requests with a key are in flight (--idempotency-max-entries, "
        "--idempotency-max-per-caller).",
        "IDEMPOTENCY_STORE_UNAVAILABLE": "Check the idempotency store (--idempotency-store); the request "
        "can be retried with the same Idempotency-Key.",
        "RATE_LIMITED": "Wait the Retry-After seconds before the next request; the RateLimit header says "
        "how many are left (--rate-limit).",
        "TOO_MANY_IN_FLIGHT": "Wait for one of this caller's requests in flight to end (--max-concurrent).",
        "RATE_LIMIT_STORE_UNAVAILABLE": "Check the rate-limit store (--rate-limit-store); the request can be "
        "retried after the Retry-After seconds.",
    }.get(name, _PUBLIC_DEFAULT)


def public_words(kind: ErrorKind, message: str, suggestion: str, config: ProxyConfig) -> tuple[str, str]:
    """
    The message and suggestion a client outside the proxy's host reads.

    A 4xx error is about the client's own request: its words stay (the
    body limit without the option that raises it).  A 5xx error's words
    name internals: a fixed sentence of its type replaces them.
    """
    if kind.status < 500:
        if kind.error_type == "BODY_TOO_LARGE":
            suggestion = f"Send at most {config.max_body} bytes."
        return message, suggestion
    return _PUBLIC.get(kind.error_type, (f"{kind.title}.", _PUBLIC_DEFAULT))


class SpawnedChild(Protocol):
    """
    A C{--spawn} child as error answers see it
    (L{sora2proxy.ops._spawn.SpawnedCommand} is one).
    """

    @property
    def name(self) -> str:
        """Its name, the tag of its output lines in the proxy's log."""

    @property
    def alive(self) -> bool:
        """Whether it runs now."""

    @property
    def last_exit(self) -> str | None:
        """How it last exited (C{status 1}, C{signal 9}), or L{None} if never."""

    @property
    def exited_at(self) -> float | None:
        """When it last exited."""

    @property
    def restart_at(self) -> float | None:
        """When it is started again, while it waits for a restart."""

    @property
    def last_output(self) -> Sequence[str]:
        """Its last few output lines."""


@frozen
class ChildNote:
    """
    What an unreachable error says of the C{--spawn} children that exited.

    @ivar fact: a sentence for the message.
    @ivar suggestion: replaces C{--suggestion}: the proxy runs the backend.
    """

    fact: str
    suggestion: str


def child_note(children: Sequence[SpawnedChild], now: float) -> ChildNote | None:
    """
    @return: what to say of the children that are down, or exited less than
        L{RECENT_EXIT} seconds ago; L{None} when none did.
    """
    facts, where = [], []
    for child in children:
        how, at = child.last_exit, child.exited_at
        if how is None or at is None or (child.alive and now - at > RECENT_EXIT):
            continue
        clock = time.strftime("%H:%M:%S", time.gmtime(at))
        if child.alive:
            facts.append(f"the --spawn command {child.name} exited ({how}) at {clock} UTC and was restarted")
        else:
            restart = child.restart_at
            when = "" if restart is None else f"; it restarts in {math.ceil(max(0.0, restart - now))} s"
            facts.append(f"the --spawn command {child.name} exited ({how}) at {clock} UTC{when}")
        last = f" (last: {child.last_output[-1]!r})" if child.last_output else ""
        where.append(f"lines tagged [{child.name}]{last}")
    if not facts:
        return None
    fact = "; ".join(facts)
    return ChildNote(
        fact[0].upper() + fact[1:] + ".",
        "The proxy runs this backend (--spawn) and restarts it: its output is in the proxy's log, "
        + "; ".join(where)
        + ".",
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


def attempts(count: int) -> str:
    """
    @return: C{"1 attempt"}, C{"3 attempts"}.
    """
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def gave_up_message(gave_up: GaveUp, upstream: str, budget_exhausted: bool) -> tuple[str, dict[str, Any]]:
    """
    @return: the message and the extra C{details} for a request that gave up.
    """
    kind = gave_up.failure.kind
    tries = attempts(gave_up.tries)
    reason = gave_up.failure.reason
    if kind is ECONNREFUSED:
        message = f"The API backend at {upstream} refused the connection ({tries})."
    elif kind is TIMEOUT:
        message = f"The API backend at {upstream} timed out: {reason} ({tries})."
    else:
        message = f"The API backend at {upstream} failed: {reason} ({tries})."
    extra: dict[str, Any] = {"retryable": gave_up.retryable, "reason": reason}
    if budget_exhausted:
        extra["retryBudgetExhausted"] = True
    return message, extra
