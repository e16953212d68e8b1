"""
How a response's body protocol learns that the body ended: a body read whole
is C{connectionLost(ResponseDone)} for any protocol, told without making a
Failure to one that has C{ended_whole()} (the proxy's relay); a body cut
short is always C{connectionLost} with its reason.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed

from sora2proxy.http._upstream_response import UpstreamResponse

from .helpers import InertReadControl


class Plain(Protocol):
    """A body protocol that knows only IProtocol."""

    def __init__(self) -> None:
        self.data = b""
        self.reasons: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.reasons.append(reason)


class Aware(Plain):
    """A body protocol with ended_whole (as the proxy's BodyRelay)."""

    def __init__(self) -> None:
        super().__init__()
        self.whole = 0

    def ended_whole(self) -> None:
        self.whole += 1


def response() -> UpstreamResponse:
    return UpstreamResponse((b"HTTP", 1, 1), 200, b"OK", {}, {}, 5, InertReadControl())


class BodyEndTests(SynchronousTestCase):
    def test_plain_protocol_gets_response_done(self) -> None:
        """A protocol without ended_whole gets connectionLost(ResponseDone), once, after the data."""
        for early in (False, True):  # the body ended before or after deliverBody
            answer, body = response(), Plain()
            if not early:
                answer.deliverBody(body)
            answer.body_data(b"hello")
            answer.body_ended(None)
            if early:
                answer.deliverBody(body)
            self.assertEqual(body.data, b"hello")
            self.assertEqual(len(body.reasons), 1, early)
            self.assertTrue(body.reasons[0].check(ResponseDone), early)

    def test_aware_protocol_told_whole(self) -> None:
        """A protocol with ended_whole is told that, once, and gets no connectionLost."""
        for early in (False, True):
            answer, body = response(), Aware()
            if not early:
                answer.deliverBody(body)
            answer.body_data(b"hello")
            answer.body_ended(None)
            answer.body_ended(None)  # ends once
            if early:
                answer.deliverBody(body)
            self.assertEqual((body.data, body.whole, body.reasons), (b"hello", 1, []), early)

    def test_cut_short_is_connection_lost(self) -> None:
        """A body cut short is connectionLost with its reason, for either kind of protocol."""
        for kind in (Plain, Aware):
            answer, body = response(), kind()
            answer.deliverBody(body)
            answer.body_ended(Failure(ResponseFailed([Failure(ValueError("cut"))])))
            self.assertEqual(len(body.reasons), 1)
            self.assertTrue(body.reasons[0].check(ResponseFailed))
