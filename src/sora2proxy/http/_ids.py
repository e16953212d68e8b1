"""
Fresh request ids without a system call per request: 128 random bits from
the kernel's generator (C{os.urandom}), read 4 KiB at a time, as hex.

This module imports nothing of the package.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

#: Bytes read from the kernel at once: 256 ids.
POOL_BYTES = 4096


class RandomIds:
    """
    Request ids of 32 lowercase hex digits (128 bits each), each from the
    kernel's random generator and never given twice.  A forked child starts
    a fresh pool, so that parent and child never share ids.
    """

    __slots__ = ("__weakref__", "_at", "_hex", "_urandom")

    def __init__(self, urandom: Callable[[int], bytes] = os.urandom) -> None:
        self._urandom = urandom
        self._hex = ""  # filled at the first id: nothing read before a fork is reused
        self._at = 0
        if hasattr(os, "register_at_fork"):
            child_forgets = weakref.WeakMethod(self.forget)
            os.register_at_fork(after_in_child=lambda: (child_forgets() or _nothing)())

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex = self._urandom(POOL_BYTES).hex()
            at = 0
        self._at = at + 32
        return self._hex[at : at + 32]

    def forget(self) -> None:
        """
        Drop the unread ids (a forked child must not give its parent's).
        """
        self._hex = ""
        self._at = 0


def _nothing() -> None:
    pass
