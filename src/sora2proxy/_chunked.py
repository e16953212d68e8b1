"""
The chunked transfer coding (RFC 9112 section 7.1): a decoder for upstream
response bodies and an encoder for request bodies of unknown length.

This module imports nothing of the package.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IProducer
from zope.interface import implementer

#: The longest chunk-size line (size and extensions) accepted.
MAX_SIZE_LINE = 4096
#: The most bytes of trailer fields accepted (they are read and dropped).
MAX_TRAILERS = 16 * 1024

_HEX = frozenset(b"0123456789abcdefABCDEF")


class WireError(Exception):
    """
    The upstream broke HTTP/1.1's syntax; the connection cannot be trusted.
    """


class ChunkedDecoder:
    """
    Decodes a chunked body fed in pieces of any size.

    @ivar done: the last chunk and the trailers have been read.
    @ivar rest: bytes that followed the body (only meaningful once C{done}).
    """

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0  # data bytes left in the current chunk
        self._state = "size"  # size | data | crlf | trailers | done
        self._trailer_bytes = 0
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        @return: the body bytes decoded from C{data}.
        @raise WireError: the coding is broken.
        """
        out: list[bytes] = []
        data = self._pending + data if self._pending else data
        self._pending = b""
        position = 0
        end = len(data)
        while position < end:
            state = self._state
            if state == "data":
                take = min(self._left, end - position)
                out.append(data[position : position + take])
                position += take
                self._left -= take
                if self._left == 0:
                    self._state = "crlf"
            elif state == "crlf":
                if end - position < 2:
                    self._pending = data[position:]
                    return out
                if data[position : position + 2] != b"\r\n":
                    raise WireError("a chunk does not end with CRLF")
                position += 2
                self._state = "size"
            elif state == "size":
                newline = data.find(b"\n", position)
                if newline < 0:
                    if end - position > MAX_SIZE_LINE:
                        raise WireError("a chunk-size line is too long")
                    self._pending = data[position:]
                    return out
                self._left = _chunk_size(data[position:newline])
                position = newline + 1
                self._state = "data" if self._left else "trailers"
            elif state == "trailers":
                newline = data.find(b"\n", position)
                if newline < 0:
                    self._trailer_bytes += end - position
                    if self._trailer_bytes > MAX_TRAILERS:
                        raise WireError("the trailers are too large")
                    self._pending = data[position:]
                    return out
                line = data[position:newline].rstrip(b"\r")
                self._trailer_bytes += newline + 1 - position
                if self._trailer_bytes > MAX_TRAILERS:
                    raise WireError("the trailers are too large")
                position = newline + 1
                if not line:
                    self._state = "done"
                    self.done = True
                    self.rest = data[position:]
                    return out
            else:
                break
        return out


def _chunk_size(line: bytes) -> int:
    size = line.rstrip(b"\r").partition(b";")[0].strip(b" \t")
    if not size or len(size) > 16 or not _HEX.issuperset(size):
        raise WireError(f"bad chunk size {line[:40]!r}")
    return int(size, 16)


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
