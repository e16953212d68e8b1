"""
Where Idempotency-Key outcomes are kept: the store protocol, its values,
and L{RedisStore} (shared by every worker and instance; the per-process
store is L{sora2proxy.idempotency._memory.MemoryStore}).  An entry is either
a request in flight or the answer stored for replay.  Every operation names
the caller (its L{sora2proxy._identity.Identity} digest), so that a store
can bound entries per caller.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from attrs import define, frozen
from twisted.internet.defer import Deferred

from .._redis import redis_pool


class StoreUnavailable(Exception):
    """
    The store could not be reached (Redis down): the caller fails open or closed.
    """


class StoreFull(Exception):
    """
    No room for a new claim (the store, or this caller's share, is full of
    requests in flight): the request is refused, never forwarded unprotected.
    """


@frozen
class StoredResponse:
    """
    An upstream answer as stored for replay.
    """

    status: int
    phrase: bytes
    headers: tuple[tuple[bytes, tuple[bytes, ...]], ...]
    body: bytes

    @property
    def size(self) -> int:
        """
        Bytes it takes, roughly: body plus headers.
        """
        return len(self.body) + sum(len(n) + sum(len(v) for v in vs) for n, vs in self.headers) + 64


@frozen
class Entry:
    """
    What the store holds for one key.

    @ivar fingerprint: the first request's fingerprint.
    @ivar response: its stored answer, or L{None} while it is in flight.
    """

    fingerprint: str
    response: StoredResponse | None = None

    def to_bytes(self) -> bytes:
        """
        Serialised for Redis.
        """
        data: dict[str, Any] = {"f": self.fingerprint}
        if self.response is not None:
            r = self.response
            data["r"] = {
                "s": r.status,
                "p": r.phrase.decode("latin-1"),
                "h": [[n.decode("latin-1"), [v.decode("latin-1") for v in vs]] for n, vs in r.headers],
                "b": base64.b64encode(r.body).decode("ascii"),
            }
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Entry:
        """
        Read back what L{to_bytes} wrote.
        """
        data = json.loads(raw)
        stored = data.get("r")
        if stored is None:
            return cls(data["f"])
        headers = tuple(
            (n.encode("latin-1"), tuple(v.encode("latin-1") for v in vs)) for n, vs in stored["h"]
        )
        response = StoredResponse(
            stored["s"], stored["p"].encode("latin-1"), headers, base64.b64decode(stored["b"])
        )
        return cls(data["f"], response)


class IdempotencyStore(Protocol):
    """
    Atomic claim, completion and release of keys.
    """

    description: str

    def claim(self, caller: str, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        """
        Mark C{key} in flight unless it exists; fires with L{None} when this
        caller now owns it, else with the existing entry; fails with
        L{StoreFull} when there is no room for a claim.
        """

    def complete(self, caller: str, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        """Store the answer for C{ttl} seconds."""

    def release(self, caller: str, key: str) -> Deferred[None]:
        """Forget C{key}: it is free again."""

    def size(self) -> int:
        """Entries held (-1 when unknown)."""


#: KEYS: entry, caller's claims (score: expiry), caller's answers (score:
#: stored at); ARGV: marker, claim TTL ms, answer TTL ms, per-caller bound.
_CLAIM = """
local found = redis.call('GET', KEYS[1])
if found then return {1, found} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZPOPMIN', KEYS[3])
  if #oldest == 0 then return {2, ''} end
  redis.call('DEL', oldest[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {0, ''}
"""

#: KEYS: entry, caller's claims, caller's answers; ARGV: entry, answer TTL ms.
_COMPLETE = """
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZADD', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), KEYS[1])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 0
"""

#: KEYS: entry, caller's claims, caller's answers.
_RELEASE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
return 0
"""


@define
class RedisStore:
    """
    A store in Redis, shared by processes.  Each operation is one Lua script,
    so one atomic round trip: a claim sets the key only if it does not
    exist (as C{SET NX PX} would) and keeps the caller's entries within
    C{max_per_caller} (its oldest stored answer goes; when all of them are
    in flight the claim fails with L{StoreFull}).  Answers expire with the
    TTL; the total is bounded by Redis's own C{maxmemory}.

    @ivar redis: a txredisapi connection (pool).
    """

    redis: Any
    description: str
    prefix: str = "sora2proxy:idempotency:"
    max_per_caller: int = 1000
    answer_ttl: float = 86_400.0

    def _fail(self, failure: Any) -> None:
        if failure.check(StoreFull):
            failure.raiseException()
        raise StoreUnavailable(failure.getErrorMessage())

    def _keys(self, caller: str, key: str) -> list[str]:
        who = f"{self.prefix}caller:{caller}:"
        return [self.prefix + key, who + "claims", who + "answers"]

    def claim(self, caller: str, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        marker = Entry(fingerprint).to_bytes()
        args = [marker, int(ttl * 1000), int(self.answer_ttl * 1000), self.max_per_caller]
        running: Deferred[Any] = self.redis.eval(_CLAIM, self._keys(caller, key), args)

        def claimed(result: Any) -> Entry | None:
            if result[0] == 2:
                raise StoreFull(f"this caller has {self.max_per_caller} requests with a key in flight")
            return Entry.from_bytes(result[1]) if result[0] == 1 else None

        return running.addCallback(claimed).addErrback(self._fail)

    def complete(self, caller: str, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        args = [entry.to_bytes(), int(ttl * 1000)]
        running: Deferred[Any] = self.redis.eval(_COMPLETE, self._keys(caller, key), args)
        return running.addCallback(lambda _: None).addErrback(self._fail)

    def release(self, caller: str, key: str) -> Deferred[None]:
        running: Deferred[Any] = self.redis.eval(_RELEASE, self._keys(caller, key))
        return running.addCallback(lambda _: None).addErrback(self._fail)

    def size(self) -> int:
        return -1


def redis_store(
    url: str, timeout: float = 2.0, max_per_caller: int = 1000, answer_ttl: float = 86_400.0
) -> RedisStore:
    """
    A L{RedisStore} for C{redis://HOST:PORT/DB}.  txredisapi imports the
    global reactor, so this is only called once it is installed.
    """
    pool = redis_pool(url, timeout)
    return RedisStore(pool, url, max_per_caller=max_per_caller, answer_ttl=answer_ttl)
