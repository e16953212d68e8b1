"""
The request head the upstream client writes, read back with h11 (the
oracle): the method, the target as given (fragment dropped), the headers
given in their order with the upstream's Host unless one is given, and the
body's framing; URLs that are not http(s) and bad methods or targets are
refused before anything is written.
"""

from __future__ import annotations

from typing import Any

import h11
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from sora2proxy.http._client import UpstreamClient


@implementer(IAgentEndpointFactory, IStreamClientEndpoint)
class Written:
    """Endpoints whose connections keep what is written to them."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def endpointForURI(self, uri: Any) -> Written:
        return self

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)


def read_back(raw: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """
    @return: h11's reading of the request head C{raw}: method, target and
        headers (names as written).
    """
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    event: Any = server.next_event()
    assert isinstance(event, h11.Request), event
    return event.method, event.target, [(name, value) for name, _, value in event.headers._full_items]


TOKENS = st.sampled_from([b"User-Agent", b"X-Request-Id", b"Accept", b"Connection", b"Content-Length"])
TARGETS = st.sampled_from([b"", b"/", b"/a", b"/a?", b"/a?b=1&c", b"?q=1", b"/c%2Fd;x", b"/api/small.json"])


class ClientHeadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.endpoints = Written()
        self.client = UpstreamClient(Clock(), self.endpoints)

    def written(self) -> bytes:
        return self.endpoints.transports[-1].value()

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from([b"GET", b"POST", b"DELETE", b"M-SEARCH"]),
        st.sampled_from([b"http://u.test", b"http://u.test:81", b"https://u.test:443", b"http://[::1]:8"]),
        TARGETS,
        st.sampled_from([b"", b"#", b"#frag/x?y"]),
        st.lists(st.tuples(TOKENS, st.lists(st.sampled_from([b"v", b"a b", b"1"]), min_size=1, max_size=3))),
        st.booleans(),
    )
    @example(b"GET", b"http://u.test", b"", b"#frag/x?y", [], False)  # a fragment right after the authority
    def test_head_as_h11_reads_it(
        self,
        method: bytes,
        origin: bytes,
        target: bytes,
        fragment: bytes,
        fields: list[tuple[bytes, list[bytes]]],
        given_host: bool,
    ) -> None:
        """The upstream reads the method, the target as given and the headers in order, with one Host."""
        headers = Headers()
        for name, values in fields:
            headers.setRawHeaders(name, values)
        if given_host:
            headers.setRawHeaders(b"host", [b"given.test"])
        self.client.request(method, origin + target + fragment, headers)
        expected = [
            (name, value)
            for name, values in headers.getAllRawHeaders()
            if name not in (b"Connection", b"Content-Length")
            for value in values
        ]
        if headers.getRawHeaders(b"host") is None:
            host = {b"http://u.test:81": b"u.test:81", b"http://[::1]:8": b"[::1]:8"}.get(origin, b"u.test")
            expected.append((b"Host", host))
        wanted = target if target.startswith(b"/") else b"/" + target
        self.assertEqual(read_back(self.written()), (method, wanted, expected))

    def test_body_framing(self) -> None:
        """A body of known length gets Content-Length, one of unknown length chunked coding."""
        self.client.request(b"POST", b"http://u.test/a", None, Body(5))
        self.assertEqual(read_back(self.written())[2], [(b"Host", b"u.test"), (b"Content-Length", b"5")])
        self.client.request(b"POST", b"http://u.test/a", None, Body(UNKNOWN_LENGTH))
        self.assertEqual(
            read_back(self.written())[2], [(b"Host", b"u.test"), (b"Transfer-Encoding", b"chunked")]
        )

    def test_refused_before_writing(self) -> None:
        """A URL that is not http(s), a bad method or a bad target fails the request and writes nothing."""
        for method, url in [
            (b"GET", b"ftp://u.test/a"),
            (b"GET", b"HTTP://u.test/a"),
            (b"GET", b"u.test/a"),
            (b"GE T", b"http://u.test/a"),
            (b"GET", b"http://u.test/a b"),
            (b"GET", b"http://u.test/a\r\nX: 1"),
        ]:
            self.failureResultOf(self.client.request(method, url), ValueError)
        self.assertEqual(self.endpoints.transports, [])


@implementer(IBodyProducer)
class Body:
    """A body of C{length} that never gets written."""

    def __init__(self, length: Any) -> None:
        self.length = length

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return Deferred()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
