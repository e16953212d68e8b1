"""
Where limits are counted: the L{LimitStore} protocol and L{MemoryLimitStore}
(one process; Redis's is L{sora2proxy.limits._redis.RedisLimitStore}).

Times are whole microseconds.  A rate is kept as GCRA's one timestamp per
key, the theoretical arrival time (TAT): a request is accepted when the new
TAT would be at most C{burst} ahead of now, and then moves it C{interval}
further.  No windows, so no double rate at a window's edge.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class LimitStoreUnavailable(Exception):
    """
    The store could not be reached (Redis down): the gate fails open or closed.
    """


@frozen
class Spent:
    """
    The outcome of spending one request of a rate.

    @ivar accepted: whether the request is within the rate.
    @ivar micros: accepted: microseconds until the whole burst is available
        again; refused: microseconds until the next request is accepted.
    """

    accepted: bool
    micros: int


class LimitStore(Protocol):
    """
    Atomic GCRA spending and in-flight slots, per key.
    """

    description: str

    def spend(self, key: str, interval: int, burst: int) -> Deferred[Spent]:
        """
        Spend one request of C{key}'s rate: C{interval} microseconds apart,
        with C{burst} microseconds of credit (C{N * interval} for N at once).
        """

    def acquire(self, key: str, limit: int, ttl: float) -> Deferred[str | None]:
        """
        Take one of C{limit} slots of C{key}, for at most C{ttl} seconds
        (a slot of a process that died expires): a token, or L{None} when
        all are taken.
        """

    def release(self, key: str, token: str) -> Deferred[None]:
        """Give a slot back."""


def now_micros(clock: IReactorTime) -> int:
    """
    C{clock}'s time in whole microseconds.
    """
    return round(clock.seconds() * 1_000_000)


@define
class MemoryLimitStore:
    """
    Limits of one process, in bounded memory: the keys are kept in the order
    they were last spent, and a new key drops the least recent ones whose
    TAT is past (the same as no key), and the least recent one while the
    table is full (its caller gets a new burst: more than its share, never
    less).  Each costs O(1), whatever the number of callers.

    @ivar max_keys: rate keys kept at most.
    """

    _clock: IReactorTime
    max_keys: int = 100_000
    description: str = "memory"
    _tats: OrderedDict[str, int] = field(factory=OrderedDict)
    _slots: dict[str, set[str]] = field(factory=dict)
    _tokens: itertools.count[int] = field(factory=itertools.count)

    def spend(self, key: str, interval: int, burst: int) -> Deferred[Spent]:
        return succeed(self.spend_now(key, interval, burst))

    def spend_now(self, key: str, interval: int, burst: int) -> Spent:
        """
        L{spend}, answered at once.
        """
        now = now_micros(self._clock)
        tats = self._tats
        held = tats.get(key)
        tat = max(now if held is None else held, now) + interval
        if tat - now > burst:
            return Spent(False, tat - now - burst)
        if held is None:  # O(1) each: the least recently seen keys go first
            while tats and (len(tats) >= self.max_keys or next(iter(tats.values())) <= now):
                tats.popitem(last=False)
        tats[key] = tat
        tats.move_to_end(key)
        return Spent(True, tat - now)

    def size(self) -> int:
        """
        Rate keys held.
        """
        return len(self._tats)

    def acquire(self, key: str, limit: int, ttl: float) -> Deferred[str | None]:
        held = self._slots.setdefault(key, set())
        if len(held) >= limit:
            return succeed(None)
        token = str(next(self._tokens))
        held.add(token)
        return succeed(token)

    def release(self, key: str, token: str) -> Deferred[None]:
        held = self._slots.get(key)
        if held is not None:
            held.discard(token)
            if not held:
                del self._slots[key]
        return succeed(None)
