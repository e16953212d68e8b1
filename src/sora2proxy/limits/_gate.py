"""
L{Limits}: the gate of C{--rate-limit} and C{--max-concurrent}.  For a
request that a rule matches it answers an L{Admission} (the C{RateLimit}
fields to send, and the slots to free when the response ends, exactly
once) or a L{Refusal} (a 429, or a 503 when the store cannot be reached
and C{--rate-limit-fail-closed} is set).

Fields after draft-ietf-httpapi-ratelimit-headers (its -08 to -11 form,
structured fields): C{RateLimit-Policy: "NAME";q=QUOTA;w=WINDOW} and
C{RateLimit: "NAME";r=REMAINING;t=SECONDS}, the rule as written its name.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from .._errors import ErrorKind
from .._identity import Identity
from .._rules import ConcurrencyRule, RateRule, rate_rule, slots_rule
from ._store import LimitStore, LimitStoreUnavailable

RATE_LIMITED = ErrorKind("RATE_LIMITED", 429, "Too many requests", retry_after=True)
TOO_MANY_IN_FLIGHT = ErrorKind("TOO_MANY_IN_FLIGHT", 429, "Too many requests in flight", retry_after=True)
RATE_LIMIT_STORE_UNAVAILABLE = ErrorKind(
    "RATE_LIMIT_STORE_UNAVAILABLE", 503, "Rate-limit store unavailable", retry_after=True
)
#: The callers remembered for the status page's "top limited callers".
MAX_CALLERS = 1000

Fields = tuple[tuple[bytes, bytes], ...]


def _name(rule: str) -> str:
    return '"' + rule.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(rule: str, caller: Identity) -> str:
    return hashlib.sha256(rule.encode("utf-8")).hexdigest()[:16] + ":" + caller.strongest


@frozen
class Refusal:
    """
    Answer with the proxy's own error; the request is not sent.
    """

    kind: ErrorKind
    message: str
    suggestion: str
    retry_after: float = 1.0
    fields: Fields = ()

    def apply(self, request: Request) -> None:
        """
        Put its C{RateLimit} fields on C{request}'s answer.
        """
        for name, value in self.fields:
            request.responseHeaders.setRawHeaders(name, [value])


@define(eq=False)
class Admission:
    """
    The request may go.  L{release} frees its slots, once, however often called.

    @ivar fields: the C{RateLimit} and C{RateLimit-Policy} fields of its answer.
    """

    fields: Fields = ()
    _free: Callable[[], None] | None = None

    def apply(self, request: Request) -> None:
        """
        Put its fields on C{request}'s answer, and free its slots when the
        answer ends, on every path: sent whole, an error, the client gone.
        """
        for name, value in self.fields:
            request.responseHeaders.setRawHeaders(name, [value])
        if self._free is None:
            return
        if getattr(request, "_disconnected", False):
            self.release()  # gone while being checked: notifyFinish would never fire
        else:
            request.notifyFinish().addBoth(self.release)

    def release(self, _: object = None) -> None:
        """
        Free its slots (once).
        """
        free, self._free = self._free, None
        if free is not None:
            free()


@define
class Limits:
    """
    Rate and concurrency limits per caller, in a L{LimitStore}.

    @ivar rate_limited: refusals (429) by rule.
    @ivar in_flight: requests holding a slot now, by rule.
    @ivar callers: refusals by caller digest (at most L{MAX_CALLERS}).
    """

    log = Logger()

    store: LimitStore
    _clock: IReactorTime
    rates: tuple[RateRule, ...] = ()
    concurrency: tuple[ConcurrencyRule, ...] = ()
    slot_ttl: float = 300.0
    store_timeout: float = 2.0
    fail_closed: bool = False
    rate_limited: dict[str, int] = field(factory=dict)
    in_flight: dict[str, int] = field(factory=dict)
    callers: dict[str, int] = field(factory=dict)
    store_errors: int = 0
    last_store_error: str = ""
    _down_until: float = field(default=0.0, init=False)

    @classmethod
    def of(
        cls,
        store: LimitStore,
        clock: IReactorTime,
        rates: Sequence[str],
        concurrency: Sequence[str],
        **kw: object,
    ) -> Limits:
        """
        The limits of the C{--rate-limit} and C{--max-concurrent} rules as written.
        """
        made = cls(store, clock, **kw)  # type: ignore[arg-type]
        made.reconfigure(rates, concurrency, made.slot_ttl, made.fail_closed)
        return made

    def reconfigure(
        self, rates: Sequence[str], concurrency: Sequence[str], slot_ttl: float, fail_closed: bool
    ) -> None:
        """
        Use these rules from now on (a reload): a caller's spent rate and
        held slots stay with its rules as written, so a rule kept unchanged
        keeps counting; requests in flight free the slots they hold.
        """
        self.rates = tuple(map(rate_rule, rates))
        self.concurrency = tuple(map(slots_rule, concurrency))
        self.slot_ttl, self.fail_closed = slot_ttl, fail_closed
        for rule in self.rates:
            self.rate_limited.setdefault(rule.text, 0)
        for slot_rule in self.concurrency:
            self.rate_limited.setdefault(slot_rule.text, 0)
            self.in_flight.setdefault(slot_rule.text, 0)

    def admit(self, method: bytes, path: bytes, caller: Identity) -> Deferred[Admission | Refusal] | None:
        """
        @param path: the path after the prefix, without the query.
        @return: L{None} when no rule is about this request, else a Deferred
            L{Admission} or L{Refusal}.
        """
        rates = [rule for rule in self.rates if rule.path.matches(method, path)]
        slots = [rule for rule in self.concurrency if rule.path.matches(method, path)]
        if not rates and not slots:
            return None
        if self._clock.seconds() < self._down_until:  # the store just failed: not waited on again yet
            self.store_errors += 1
            return succeed(self._without_store())
        checking = Deferred.fromCoroutine(self._check(rates, slots, caller))
        if not checking.called:  # Redis: bounded; the memory store has answered already
            checking.addTimeout(self.store_timeout, self._clock, onTimeoutCancel=_timed_out)
        return checking.addErrback(self._store_failed)

    async def _check(
        self, rates: list[RateRule], slots: list[ConcurrencyRule], caller: Identity
    ) -> Admission | Refusal:
        held: list[tuple[ConcurrencyRule, str, str]] = []
        try:
            return await self._checked(rates, slots, caller, held)
        except BaseException:
            self._free(held)  # timed out or failed midway: no slot kept
            raise

    async def _checked(
        self,
        rates: list[RateRule],
        slots: list[ConcurrencyRule],
        caller: Identity,
        held: list[tuple[ConcurrencyRule, str, str]],
    ) -> Admission | Refusal:

        def free() -> None:
            self._free(held)

        for rule in slots:
            key = _key(rule.text, caller)
            token = await self.store.acquire(key, rule.limit, self.slot_ttl)
            if token is None:
                free()
                return self._refused(rule.text, caller, self._busy(rule))
            held.append((rule, key, token))
            self.in_flight[rule.text] += 1
        fields: list[tuple[str, str]] = []
        for rate in rates:
            interval = math.ceil(rate.period * 1_000_000 / rate.limit)
            spent = await self.store.spend(_key(rate.text, caller), interval, interval * rate.limit)
            policy = f"{_name(rate.text)};q={rate.limit};w={round(rate.period)}"
            if not spent.accepted:
                free()
                wait = math.ceil(spent.micros / 1_000_000)
                state = f"{_name(rate.text)};r=0;t={wait}"
                refusal = self._too_fast(
                    rate, wait, ((b"RateLimit-Policy", policy.encode()), (b"RateLimit", state.encode()))
                )
                return self._refused(rate.text, caller, refusal)
            left = (interval * rate.limit - spent.micros) // interval
            fields.append((policy, f"{_name(rate.text)};r={left};t={math.ceil(spent.micros / 1_000_000)}"))
        encoded = (
            (
                (b"RateLimit-Policy", ", ".join(p for p, _ in fields).encode()),
                (b"RateLimit", ", ".join(s for _, s in fields).encode()),
            )
            if fields
            else ()
        )
        return Admission(encoded, free if held else None)

    def _too_fast(self, rate: RateRule, wait: int, fields: Fields) -> Refusal:
        method = rate.path.method.decode()
        message = (
            f"Over the rate limit {rate.text} (--rate-limit): at most {rate.limit} {method} "
            f"{rate.path.pattern} requests per {rate.unit} per caller; the next one is accepted in {wait} s."
        )
        suggestion = f"Wait {wait} s (Retry-After) before the next one; RateLimit says how many are left."
        return Refusal(RATE_LIMITED, message, suggestion, wait, fields)

    def _busy(self, rule: ConcurrencyRule) -> Refusal:
        method = rule.path.method.decode()
        message = (
            f"Over the concurrency limit {rule.text} (--max-concurrent): at most {rule.limit} {method} "
            f"{rule.path.pattern} requests of one caller in flight at once; one must end first."
        )
        return Refusal(
            TOO_MANY_IN_FLIGHT, message, "Wait for one of your requests in flight to end, then retry."
        )

    def _refused(self, rule: str, caller: Identity, refusal: Refusal) -> Refusal:
        self.rate_limited[rule] = self.rate_limited.get(rule, 0) + 1
        callers = self.callers
        if caller.strongest not in callers and len(callers) >= MAX_CALLERS:
            del callers[min(callers, key=callers.__getitem__)]
        callers[caller.strongest] = callers.get(caller.strongest, 0) + 1
        return refusal

    def _free(self, held: list[tuple[ConcurrencyRule, str, str]]) -> None:
        for rule, key, token in held:
            self.in_flight[rule.text] -= 1
            self.store.release(key, token).addErrback(self._ignored)
        held.clear()

    def _store_failed(self, failure: Failure) -> Admission | Refusal:
        failure.trap(LimitStoreUnavailable)
        self._ignored(failure)
        self._down_until = self._clock.seconds() + STORE_RECHECK
        return self._without_store()

    def _without_store(self) -> Admission | Refusal:
        if self.fail_closed:
            message = (
                f"The rate-limit store ({self.store.description}) cannot be reached; "
                "the request was not sent (--rate-limit-fail-closed)."
            )
            return Refusal(RATE_LIMIT_STORE_UNAVAILABLE, message, "Check the store (Redis), or retry later.")
        return Admission()  # fail open: served without limits

    def _ignored(self, failure: Failure) -> None:
        failure.trap(LimitStoreUnavailable)
        self.store_errors += 1
        self.last_store_error = failure.getErrorMessage()
        self.log.warn(
            "rate-limit store {store} failed: {error}",
            store=self.store.description,
            error=self.last_store_error,
        )


#: Seconds after a store failure during which requests do not wait on the
#: store (each is served, or refused with --rate-limit-fail-closed, at once);
#: the first request after them asks the store again.
STORE_RECHECK = 1.0


def _timed_out(result: object, timeout: float) -> None:
    raise LimitStoreUnavailable(f"no answer within {timeout:g} s")


__all__ = ["Admission", "Limits", "Refusal", "succeed"]
