"""
The proxy's channel pauses its client's reads only when requests pile up
behind the one being answered, resumes them once that one is answered, and
makes no resume call after an answer when nothing was paused (Twisted's
channel resumed its transport after every answer).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sora2proxy import ProxyConfig
from sora2proxy.http._site import ProxySite


class CountingTransport(StringTransport):
    """Counts the pauses and resumes of its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = self.resumes = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.resumes += 1
        super().resumeProducing()


class Held(Resource):
    """Answers each request when told to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render(self, request: Any) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        request = self.waiting.pop(0)
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()


GET = b"GET /api/proxy/a HTTP/1.1\r\nHost: proxy.test\r\n\r\n"


def serve(resource: Resource) -> tuple[Any, CountingTransport]:
    site = ProxySite(
        resource, ProxyConfig(), reactor=MemoryReactorClock()
    )  # its timers on a clock of its own
    channel = site.buildProtocol(None)  # type: ignore[arg-type]
    transport = CountingTransport()
    channel.makeConnection(transport)
    return channel, transport


class ReadingTests(SynchronousTestCase):
    def test_no_resume_when_nothing_paused(self) -> None:
        """Answers one after another on a keep-alive connection make no pause and no resume."""
        resource = Held()
        channel, transport = serve(resource)
        for _ in range(5):
            channel.dataReceived(GET)
            resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 5)
        self.assertEqual((transport.pauses, transport.resumes), (0, 0))
        self.assertEqual(transport.producerState, "producing")

    def test_piled_up_requests_pause_then_resume(self) -> None:
        """Requests piling up behind the one in hand pause the reads; its answer resumes them, and all are answered in order."""
        resource = Held()
        channel, transport = serve(resource)
        channel.dataReceived(GET)
        for _ in range(1000):  # far past Twisted's eager read size (16 KiB) while the first waits
            channel.dataReceived(GET)
        self.assertEqual(transport.producerState, "paused")
        self.assertGreater(transport.pauses, 0)
        resource.answer()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.resumes, 1)
        while resource.waiting:
            resource.answer()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 1001)
        self.assertEqual(transport.producerState, "producing")
