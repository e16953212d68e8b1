"""
The body of an answer that is retried: read and dropped, so that its
connection can be reused; a large one is cut off instead.

This module imports nothing of the package.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol


class DiscardedBody(Protocol):
    """
    Reads and drops a body; past L{LIMIT} bytes it stops the transport
    (the connection is closed rather than read to its end).
    """

    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self._seen = 0

    def dataReceived(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > self.LIMIT and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
