"""
Where Idempotency-Key outcomes are kept: L{MemoryStore} (one process,
bounded, least recently used out first, expiry on the injected clock) or
L{RedisStore} (shared by every worker and instance).  An entry is either a
request in flight or the upstream's stored answer.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from typing import Any, Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime


class StoreUnavailable(Exception):
    """
    The store could not be reached (Redis down): the caller fails open or closed.
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

    def claim(self, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        """
        Mark C{key} in flight unless it exists; fires with L{None} when this
        caller now owns it, else with the existing entry.
        """

    def complete(self, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        """Store the answer for C{ttl} seconds."""

    def release(self, key: str) -> Deferred[None]:
        """Forget C{key}: it is free again."""

    def size(self) -> int:
        """Entries held (-1 when unknown)."""


@define
class MemoryStore:
    """
    A per-process store bounded by entries and by bytes.
    """

    _clock: IReactorTime
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    description: str = "memory"
    _entries: OrderedDict[str, tuple[float, Entry, int]] = field(factory=OrderedDict, init=False)
    stored_bytes: int = field(default=0, init=False)

    def _get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry, _ = found
        if expires <= self._clock.seconds():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.stored_bytes -= size

    def _put(self, key: str, entry: Entry, ttl: float) -> None:
        if key in self._entries:
            self._drop(key)
        size = 0 if entry.response is None else entry.response.size
        self._entries[key] = (self._clock.seconds() + ttl, entry, size)
        self.stored_bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self.stored_bytes > self.max_bytes):
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def claim(self, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        existing = self._get(key)
        if existing is not None:
            return succeed(existing)
        self._put(key, Entry(fingerprint), ttl)
        return succeed(None)

    def complete(self, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        self._put(key, entry, ttl)
        return succeed(None)

    def release(self, key: str) -> Deferred[None]:
        if key in self._entries:
            self._drop(key)
        return succeed(None)

    def size(self) -> int:
        return len(self._entries)


@define
class RedisStore:
    """
    A store in Redis, shared by processes: C{SET NX PX} claims a key
    atomically; answers expire with the TTL.

    @ivar redis: a txredisapi connection (pool).
    """

    redis: Any
    description: str
    prefix: str = "sora2proxy:idempotency:"

    def _fail(self, failure: Any) -> None:
        raise StoreUnavailable(failure.getErrorMessage())

    def claim(self, key: str, fingerprint: str, ttl: float) -> Deferred[Entry | None]:
        name = self.prefix + key
        marker = Entry(fingerprint).to_bytes()
        setting: Deferred[Any] = self.redis.set(
            name, marker, pexpire=int(ttl * 1000), only_if_not_exists=True
        )

        def claimed(result: Any) -> Any:
            if result:
                return None
            reading: Deferred[Any] = self.redis.get(name)
            return reading.addCallback(lambda raw: None if raw is None else Entry.from_bytes(raw))

        return setting.addCallback(claimed).addErrback(self._fail)

    def complete(self, key: str, entry: Entry, ttl: float) -> Deferred[None]:
        setting: Deferred[Any] = self.redis.set(self.prefix + key, entry.to_bytes(), pexpire=int(ttl * 1000))
        return setting.addCallback(lambda _: None).addErrback(self._fail)

    def release(self, key: str) -> Deferred[None]:
        deleting: Deferred[Any] = self.redis.delete(self.prefix + key)
        return deleting.addCallback(lambda _: None).addErrback(self._fail)

    def size(self) -> int:
        return -1


def redis_store(url: str, timeout: float = 2.0) -> RedisStore:
    """
    A L{RedisStore} for C{redis://HOST:PORT/DB}.  txredisapi imports the
    global reactor, so this is only called once it is installed.
    """
    import txredisapi
    from hyperlink import URL

    parsed = URL.from_text(url)
    db = int(parsed.path[0]) if parsed.path and parsed.path[0] else 0
    pool = txredisapi.lazyConnectionPool(
        parsed.host or "127.0.0.1",
        parsed.port or 6379,
        dbid=db,
        poolsize=4,
        reconnect=True,
        connectTimeout=timeout,
        replyTimeout=timeout,
    )
    return RedisStore(pool, url)
