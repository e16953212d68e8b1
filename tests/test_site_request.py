"""
L{ProxyRequest} skips what a proxy never reads (query and form arguments,
resource traversal under a leaf root) and still gives a resource what
twisted.web gives it: method, URI, path, the body, C{Server} and C{Date}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from sora2proxy import ProxyConfig
from sora2proxy.http._site import ProxySite

from .helpers import RecordingChannel

DATE = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n")


class Seen(Resource):
    """Answers with what it saw of the request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def render(self, request: Any) -> bytes:
        self.seen.append((request.method, request.uri, request.path, request.args, request.content.read()))
        return b"ok"


def serve(root: Resource, raw: bytes) -> bytes:
    site = ProxySite(root, ProxyConfig(), reactor=MemoryReactorClock())  # type: ignore[arg-type]
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    return transport.value()


class ProxyRequestTests(SynchronousTestCase):
    """
    A leaf root, as the proxy's own site has, and any other root.
    """

    def test_leaf_root_sees_raw_request(self) -> None:
        """
        A form POST with a query reaches a leaf root as bytes: nothing is
        parsed into args, and the answer carries Server and Date.
        """
        root = Seen()
        body = b"a=1&b=2"
        answer = serve(
            root,
            b"POST /api/proxy/x%20y?q=1&q=2 HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n" + body,
        )
        self.assertEqual(root.seen, [(b"POST", b"/api/proxy/x%20y?q=1&q=2", b"/api/proxy/x%20y", {}, body)])
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"\r\nServer: TwistedWeb/", answer)
        self.assertRegex(answer, DATE)

    def test_other_roots_traversed(self) -> None:
        """
        A root that is not a leaf is traversed as twisted.web does.
        """
        root, child = Resource(), Seen()
        root.putChild(b"api", child)
        answer = serve(root, b"GET /api/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(child.seen, [(b"GET", b"/api/x?q=1", b"/api/x", {b"q": [b"1"]}, b"")])
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)


def _written(factory: Any, method: bytes, proto: bytes, code: int, length: bool, chunks: list[bytes]) -> Any:
    channel = RecordingChannel()
    request = factory(channel, parsePOSTFormSubmission=False)
    request.method, request.clientproto, request.defaultContentType = method, proto, None
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    if length:
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % sum(map(len, chunks))])
    for chunk in chunks:
        request.write(chunk)
    return channel.calls, request.chunked, request.sentLength


class FirstWriteTests(SynchronousTestCase):
    """
    L{ProxyRequest}'s own first write of a plain answer sends what
    twisted.web's L{Request} sends (the oracle).
    """

    def test_same_bytes_as_twisted(self) -> None:
        """
        Every method, protocol, status and framing writes the same head,
        body and chunks as twisted.web's Request.
        """
        from twisted.web.server import Request

        from sora2proxy.http._site import ProxyRequest

        cases = 0
        for method in (b"GET", b"HEAD", b"POST"):
            for proto in (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"):
                for code in (200, 204, 304, 404, 502):
                    for length in (True, False):
                        for chunks in ([b"abc", b"de"], [b""], [b"x"]):
                            ours = _written(ProxyRequest, method, proto, code, length, chunks)
                            theirs = _written(Request, method, proto, code, length, chunks)
                            self.assertEqual(ours, theirs, (method, proto, code, length, chunks))
                            cases += 1
        self.assertEqual(cases, 270)


class WhenGoneTests(SynchronousTestCase):
    """
    L{ProxyRequest.when_gone} tells of a client that left before its
    answer was finished, as C{notifyFinish}'s errback does.
    """

    def _request(self) -> Any:
        from sora2proxy.http._site import ProxyRequest

        request = ProxyRequest(RecordingChannel(), parsePOSTFormSubmission=False)
        request.method, request.clientproto = b"GET", b"HTTP/1.1"
        return request

    def test_told_when_the_client_leaves(self) -> None:
        """
        A client that leaves mid-answer is told to every watcher, even
        after one of them fails (the failure is logged).
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        request, told = self._request(), []
        request.when_gone(lambda: 1 / 0)
        request.when_gone(lambda: told.append("gone"))
        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(told, ["gone"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_not_told_after_the_answer(self) -> None:
        """
        A connection lost after the answer was finished tells no one.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        request, told = self._request(), []
        request.when_gone(lambda: told.append("gone"))
        request.finished = 1
        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(told, [])
