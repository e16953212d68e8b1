"""
A response read from an upstream (L{UpstreamResponse}) and the transport its
body protocol sees (L{BodyTransport}): the body is buffered until a protocol
is given, and pausing that transport pauses reading from the upstream.
"""

from __future__ import annotations

import typing

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ._headers import Fields, headers_of


class ReadControl(typing.Protocol):
    """
    What a response needs of its connection.
    """

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abandon(self) -> None: ...


@implementer(IResponse)
class UpstreamResponse:
    """
    A response read from an upstream; its body is streamed to the protocol
    given to L{deliverBody} (buffered until then, the connection paused).

    @ivar fields: the response's header fields (C{headers} is made of them
        when first read).
    @ivar connection_fields: its header fields about the connection
        (C{Connection}, C{Transfer-Encoding}...), not in C{headers}.
    """

    request = None
    previousResponse = None

    def __init__(
        self,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        fields: Fields,
        connection_fields: Fields,
        length: int | object,
        connection: ReadControl,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.fields = fields
        self.connection_fields = connection_fields
        self._headers: Headers | None = None
        self.length = length
        self._protocol: Protocol | None = None
        self._early: list[bytes] = []
        self._ended: Failure | None = None
        self._whole = False  # the body ended whole before a protocol was given
        self._transport = BodyTransport(connection)

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = headers_of(self.fields)
        return self._headers

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Protocol) -> None:
        if self._protocol is not None:
            raise RuntimeError("the body of this response is delivered already")
        self._protocol = protocol
        protocol.makeConnection(self._transport)
        early = self._early
        if early:
            self._early = []
            for data in early:
                protocol.dataReceived(data)
        if self._ended is not None or self._whole:
            self.body_ended(self._ended)
        else:
            self._transport.resumeProducing()

    def body_data(self, data: bytes) -> None:
        if self._protocol is None:
            if not self._early:
                self._transport.pauseProducing()
            self._early.append(data)
        else:
            self._protocol.dataReceived(data)

    def body_ended(self, reason: Failure | None) -> None:
        """
        The body ended: whole (C{reason} L{None}), or cut short.  A protocol
        with an C{ended_whole()} method is told that instead of
        C{connectionLost(Failure(ResponseDone()))}, so that a body read whole
        (every answer, nearly) makes no exception and no L{Failure}.
        """
        self._transport.detach()
        if self._protocol is None:
            self._ended, self._whole = reason, reason is None
            return
        protocol, self._protocol = self._protocol, Protocol()  # ends once
        if reason is None:
            ended_whole = getattr(protocol, "ended_whole", None)
            if ended_whole is not None:
                ended_whole()
                return
            reason = Failure(ResponseDone())
        protocol.connectionLost(reason)


@implementer(IPushProducer)
class BodyTransport:
    """
    What a response's body protocol sees as its transport: pausing it pauses
    reading from the upstream, stopping it abandons the response (and the
    connection).  It is inert once the response has ended, so that a
    producer left registered cannot touch the next request on the connection.
    """

    def __init__(self, connection: ReadControl) -> None:
        self._connection: ReadControl | None = connection
        self._paused = False

    def detach(self) -> None:
        if self._paused and self._connection is not None:
            self._connection.resume_reading()
        self._connection = None

    def pauseProducing(self) -> None:
        if self._connection is not None and not self._paused:
            self._paused = True
            self._connection.pause_reading()

    def resumeProducing(self) -> None:
        if self._connection is not None and self._paused:
            self._paused = False
            self._connection.resume_reading()

    def stopProducing(self) -> None:
        if self._connection is not None:
            self._connection.abandon()

    def loseConnection(self) -> None:
        self.stopProducing()

    def abortConnection(self) -> None:
        self.stopProducing()
