"""
The chunked transfer coding (RFC 9112 section 7.1): L{ChunkedEncoder} for
request bodies of unknown length sent upstream (llhttp decodes the
responses: see L{sora2proxy.http._reader}), and L{StrictChunkedDecoder} for
the chunked request bodies clients send.

This module imports nothing of the package.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IProducer
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError
from zope.interface import implementer

#: Most significant hex digits of a chunk size (a size that fits in 64 bits).
MAX_CHUNK_DIGITS = 16


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


class StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, refusing a chunk size that does not fit in 64
    bits (RFC 9112 section 7.1: recipients guard against overflow), which
    Twisted would otherwise wait on for ever.

    @ivar problem: why the body was refused (or L{None}).
    """

    problem: str | None = None

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except _MalformedChunkedDataError as malformed:
            self.problem = str(malformed)
            raise

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        end = self._buffer.find(b"\r\n", self._start)
        line = self._buffer if end < 0 else self._buffer[:end]
        size = line.split(b";", 1)[0]
        if len(size.lstrip(b"0")) > MAX_CHUNK_DIGITS:
            raise _MalformedChunkedDataError("Chunk size does not fit in 64 bits.")
        self._no_bare_lf(end)
        return super()._dataReceived_CHUNK_LENGTH()

    def _dataReceived_TRAILER(self) -> bool:
        self._no_bare_lf(self._buffer.find(b"\r\n", self._start))
        return super()._dataReceived_TRAILER()

    def _no_bare_lf(self, end: int) -> None:
        # Twisted waits for a CRLF that a line ended in a bare LF never brings.
        lf = self._buffer.find(b"\n", self._start)
        if lf >= 0 and (end < 0 or lf < end + 1):
            raise _MalformedChunkedDataError(
                "A chunk-size or trailer line ends in a bare LF; lines end in CRLF."
            )
