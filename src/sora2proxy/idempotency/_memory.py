"""
L{MemoryStore}: Idempotency-Key entries in one process, on the injected
clock, bounded in total (entries and bytes) and per caller.

In-flight claims are never evicted: a claim that finds no room is refused
with L{StoreFull}.  When room is needed, a stored answer goes: the caller's
own least recently used one when that caller is at its bound, else the least
recently used answer of the caller holding the most, so that one caller
flooding the store pushes out its own answers, not another's.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from ._store import Entry, StoreFull


@define
class _Slot:
    caller: str
    expires: float
    entry: Entry
    size: int


@define
class _Caller:
    #: stored answers' keys, least recently used first
    answers: OrderedDict[str, None] = field(factory=OrderedDict)
    claims: int = 0

    @property
    def held(self) -> int:
        return self.claims + len(self.answers)


@define
class _Ranking:
    """
    Callers by how many stored answers they hold, the largest found in O(1).
    """

    _counts: dict[str, int] = field(factory=dict)
    _buckets: dict[int, OrderedDict[str, None]] = field(factory=dict)
    _top: int = 0

    def _move(self, caller: str, by: int) -> None:
        old = self._counts.pop(caller, 0)
        if old:
            bucket = self._buckets[old]
            del bucket[caller]
            if not bucket:
                del self._buckets[old]
                if old == self._top:
                    self._top = old - 1  # this caller's new bucket, or none left
        new = old + by
        if new:
            self._counts[caller] = new
            self._buckets.setdefault(new, OrderedDict())[caller] = None
            self._top = max(self._top, new)

    def up(self, caller: str) -> None:
        self._move(caller, 1)

    def down(self, caller: str) -> None:
        self._move(caller, -1)

    def largest(self) -> str | None:
        bucket = self._buckets.get(self._top)
        return next(iter(bucket)) if bucket else None


@define
class MemoryStore:
    """
    A per-process store bounded by entries and bytes in total, and by
    entries per caller.
    """

    _clock: IReactorTime
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_per_caller: int = 1000
    description: str = "memory"
    _slots: dict[str, _Slot] = field(factory=dict, init=False)
    _claims: OrderedDict[str, None] = field(factory=OrderedDict, init=False)
    _callers: dict[str, _Caller] = field(factory=dict, init=False)
    _ranking: _Ranking = field(factory=_Ranking, init=False)
    stored_bytes: int = field(default=0, init=False)

    def _get(self, key: str) -> Entry | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires <= self._clock.seconds():
            self._drop(key)
            return None
        if slot.entry.response is not None:
            self._callers[slot.caller].answers.move_to_end(key)
        return slot.entry

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key)
        owner = self._callers[slot.caller]
        if slot.entry.response is None:
            owner.claims -= 1
            del self._claims[key]
        else:
            del owner.answers[key]
            self._ranking.down(slot.caller)
            self.stored_bytes -= slot.size
        if not owner.held:
            del self._callers[slot.caller]

    def _evict_from(self, caller: str | None) -> bool:
        owner = None if caller is None else self._callers.get(caller)
        if owner is None or not owner.answers:
            return False
        self._drop(next(iter(owner.answers)))
        return True

    def _expire_claims(self) -> None:
        now = self._clock.seconds()
        for key in list(self._claims):
            if self._slots[key].expires > now:
                break  # claims share one TTL: the oldest expires first
            self._drop(key)

    def _make_room(self, caller: str) -> None:
        self._expire_claims()
        owner = self._callers.get(caller)
        if owner is not None and owner.held >= self.max_per_caller and not self._evict_from(caller):
            raise StoreFull(f"this caller has {owner.claims} requests with a key in flight")
        while len(self._slots) >= self.max_entries:
            if not self._evict_from(self._ranking.largest()):
                raise StoreFull(f"{len(self._claims)} requests with a key are in flight")

    def claim(self, caller: str, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        existing = self._get(key)
        if existing is not None:
            return succeed(existing)
        try:
            self._make_room(caller)
        except StoreFull:
            return fail()
        self._slots[key] = _Slot(caller, self._clock.seconds() + ttl, Entry(fingerprint), 0)
        self._claims[key] = None
        self._callers.setdefault(caller, _Caller()).claims += 1
        return succeed(None)

    def complete(self, caller: str, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        assert entry.response is not None
        if key in self._slots:
            self._drop(key)
        size = entry.response.size
        if size > self.max_bytes:
            return succeed(None)
        self._slots[key] = _Slot(caller, self._clock.seconds() + ttl, entry, size)
        self._callers.setdefault(caller, _Caller()).answers[key] = None
        self._ranking.up(caller)
        self.stored_bytes += size
        while self.stored_bytes > self.max_bytes or len(self._slots) > self.max_entries:
            if not self._evict_from(self._ranking.largest()):
                break
        return succeed(None)

    def release(self, caller: str, key: str) -> Deferred[None]:
        if key in self._slots:
            self._drop(key)
        return succeed(None)

    def size(self) -> int:
        return len(self._slots)


__all__ = ["MemoryStore"]
