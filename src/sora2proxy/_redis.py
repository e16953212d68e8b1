"""
The connection to Redis that the shared stores use (the Idempotency-Key
store and the rate-limit store): one lazy txredisapi pool for a
C{redis://HOST:PORT/DB} URL.

This module imports nothing of the package.
"""

from __future__ import annotations

from typing import Any


def redis_pool(url: str, timeout: float) -> Any:
    """
    A lazy, reconnecting txredisapi pool of 4 connections to C{url}
    (C{redis://HOST:PORT/DB}; 127.0.0.1, 6379 and 0 by default), each
    connection and reply bounded by C{timeout} seconds.  txredisapi imports
    the global reactor, so this is only called once it is installed.
    """
    import txredisapi
    from hyperlink import URL

    parsed = URL.from_text(url)
    db = int(parsed.path[0]) if parsed.path and parsed.path[0] else 0
    return txredisapi.lazyConnectionPool(
        parsed.host or "127.0.0.1",
        parsed.port or 6379,
        dbid=db,
        poolsize=4,
        reconnect=True,
        connectTimeout=timeout,
        replyTimeout=timeout,
    )
