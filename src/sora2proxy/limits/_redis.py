"""
L{RedisLimitStore}: limits shared by every process and instance through
one Redis.  Each operation is one Lua script, so one atomic round trip,
sent with C{EVALSHA} by txredisapi (C{EVAL} the first time, and again if Redis answers C{NOSCRIPT}), timed
by Redis's own clock so that every proxy agrees on now.
"""

from __future__ import annotations

import uuid
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .._redis import redis_pool
from ._store import LimitStoreUnavailable, Spent

#: KEYS: the rate's TAT; ARGV: interval, burst (microseconds).
_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1])
if tat - now > tonumber(ARGV[2]) then return {0, tat - now - tonumber(ARGV[2])} end
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000))
return {1, tat - now}
"""

#: KEYS: the caller's slots (score: expiry, ms); ARGV: limit, token, TTL ms.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: KEYS: the caller's slots; ARGV: token.
_RELEASE = "redis.call('ZREM', KEYS[1], ARGV[1]) return 0"


@define
class RedisLimitStore:
    """
    A L{LimitStore<sora2proxy.limits._store.LimitStore>} in Redis.

    @ivar redis: a txredisapi connection (pool).
    """

    redis: Any
    description: str
    prefix: str = "sora2proxy:limits:"
    _owner: str = field(factory=lambda: uuid.uuid4().hex[:12])
    _count: int = 0

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        # txredisapi sends EVALSHA once the script is known, EVAL again on NOSCRIPT.
        running: Deferred[Any] = self.redis.eval(script, keys, args)
        return running.addErrback(self._fail)

    def _fail(self, failure: Failure) -> None:
        raise LimitStoreUnavailable(failure.getErrorMessage() or repr(failure.value))

    def spend(self, key: str, interval: int, burst: int) -> Deferred[Spent]:
        running = self._run(_SPEND, [self.prefix + key], [interval, burst])
        return running.addCallback(lambda result: Spent(bool(result[0]), int(result[1])))

    def acquire(self, key: str, limit: int, ttl: float) -> Deferred[str | None]:
        self._count += 1
        token = f"{self._owner}:{self._count}"
        running = self._run(_ACQUIRE, [self.prefix + key], [limit, token, max(1, int(ttl * 1000))])
        return running.addCallback(lambda taken: token if taken else None)

    def release(self, key: str, token: str) -> Deferred[None]:
        return self._run(_RELEASE, [self.prefix + key], [token]).addCallback(lambda _: None)


def redis_limit_store(url: str, timeout: float = 2.0) -> RedisLimitStore:
    """
    A L{RedisLimitStore} for C{redis://HOST:PORT/DB}.  txredisapi imports
    the global reactor, so this is only called once it is installed.
    """
    pool = redis_pool(url, timeout)
    return RedisLimitStore(pool, url)
