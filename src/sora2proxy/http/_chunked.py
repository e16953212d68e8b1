"""
The chunked transfer coding (RFC 9112 section 7.1) for request bodies of
unknown length (llhttp decodes the responses: see L{sora2proxy.http._reader}).

This module imports nothing of the package.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IProducer
from zope.interface import implementer


@implementer(IConsumer)
class ChunkedEncoder:
    """
    Writes what it is given to C{consumer} as chunks; L{finish} writes the
    last chunk.
    """

    def __init__(self, consumer: IConsumer) -> None:
        self._consumer = consumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        if data:
            self._consumer.write(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        self._consumer.write(b"0\r\n\r\n")
