"""
Relay an upstream response to the client: status and end-to-end headers, then
the body streamed as it arrives, with backpressure (a slow client pauses the
upstream read).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from ._headers import REQUEST_ID, end_to_end


class BodyRelay(Protocol):
    """
    Receives the upstream body and writes it to the client.

    @ivar done: called once with L{None} when the body ended normally, or
        with the L{Failure} that cut it short.
    """

    def __init__(self, request: Request, done: Callable[[Failure | None], None]) -> None:
        self._request = request
        self._done = done
        self._client_gone = False
        self._producing: IPushProducer | None = None

    def connectionMade(self) -> None:
        if self._client_gone:
            self.stop()
            return
        producer = self.transport
        assert producer is not None
        self._producing = producer  # type: ignore[assignment]
        self._request.registerProducer(producer, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._client_gone:
            self._request.write(data)

    def client_gone(self) -> None:
        """
        The client went away: stop reading from the upstream.
        """
        self._client_gone = True
        self.stop()

    def stop(self) -> None:
        """
        Abandon the upstream response (its connection is closed).
        """
        if self._producing is not None:
            self._producing.stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        producing, self._producing = self._producing, None
        if self._client_gone:
            self._done(reason)
            return
        if producing is not None:
            self._request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._request.finish()
            self._done(None)
            return
        # The upstream died mid-body: the client must see a cut transfer,
        # never a complete-looking one.
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self._done(reason)


def start_response(request: Request, response: IResponse, request_id: str) -> None:
    """
    Copy the upstream's status and end-to-end headers onto the response.
    """
    request.setResponseCode(response.code, response.phrase)
    headers = request.responseHeaders
    for name, values in end_to_end(response.headers):
        headers.setRawHeaders(name, values)
    headers.setRawHeaders(REQUEST_ID, [request_id.encode("ascii")])
