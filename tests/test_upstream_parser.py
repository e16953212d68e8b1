"""
The proxy against a raw-socket upstream that sends exact bytes: broken or
hostile responses become a 502 with none of their bytes, and a connection
is reused only when what came over it was exactly one complete response.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from .helpers import LoopbackMixin, json_of, reactor


class Scripted(Protocol):
    """Answers each request head with the factory's next answer, exactly as given."""

    factory: ScriptedUpstream

    def connectionMade(self) -> None:
        self.buffer = b""
        self.factory.connections.append(self)
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.factory.heads.append(head)
            assert self.transport is not None
            self.transport.write(self.factory.answers.pop(0))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class ScriptedUpstream(Factory):
    protocol = Scripted
    noisy = False

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.heads: list[bytes] = []
        self.connections: list[Scripted] = []


@implementer(ILogObserver)
class ErrorEvents(list[dict[str, Any]]):
    """Log events that carry an error."""

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.append(event)


_MARK = b"X-Upstream-Mark: bad\r\n"

#: The five responses the review found forwarded or mishandled, each marked.
BROKEN = {
    "bare CR in the reason phrase": b"HTTP/1.1 200 OK\rSet-Cookie: evil=1\r\n"
    + _MARK
    + b"Content-Length: 4\r\n\r\nevil",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n" + _MARK + b"Content-Length: 4\r\n\r\nevil",
    "5,000-digit Content-Length": b"HTTP/1.1 200 OK\r\n"
    + _MARK
    + b"Content-Length: "
    + b"9" * 5000
    + b"\r\n\r\nevil",
    "obs-folded Transfer-Encoding": b"HTTP/1.1 200 OK\r\n"
    + _MARK
    + b"Transfer-Encoding: gzip\r\n chunked\r\n\r\n4\r\nevil\r\n0\r\n\r\n",
    "leading space in a chunk size": b"HTTP/1.1 200 OK\r\n"
    + _MARK
    + b"Transfer-Encoding: chunked\r\n\r\n 4\r\nevil\r\n0\r\n\r\n",
}


class UpstreamParserTests(LoopbackMixin, TestCase):
    def proxy_to(self, upstream: ScriptedUpstream, **options: Any) -> str:
        port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        options.setdefault("health_path", "")
        base, _ = self.start_proxy(upstream=f"http://127.0.0.1:{port.getHost().port}/api", **options)
        return str(base) + "/api/proxy/x"

    def error_events(self) -> ErrorEvents:
        events = ErrorEvents()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        return events

    @inlineCallbacks
    def test_broken_responses_are_502_with_none_of_their_bytes(self) -> Any:
        """Each broken response the review found gets 502 UPSTREAM_ERROR, none of its bytes, a closed connection, no unhandled error."""
        for name, raw in BROKEN.items():
            events = self.error_events()
            upstream = ScriptedUpstream(raw)
            url = self.proxy_to(upstream, attempts=1)
            response, body = yield self.fetch(b"GET", url)
            self.assertEqual(response.code, 502, name)
            details = json_of(body)["details"]
            self.assertEqual(details["errorType"], "UPSTREAM_ERROR", name)
            self.assertIn("invalid upstream response", json_of(body)["message"], name)
            self.assertNotIn(b"evil", body, name)
            self.assertFalse(response.headers.hasHeader(b"x-upstream-mark"), name)
            self.assertFalse(response.headers.hasHeader(b"set-cookie"), name)
            yield upstream.connections[0].lost  # the proxy closed it
            self.assertEqual(events, [], name)

    @inlineCallbacks
    def test_head_answer_then_get_on_the_same_connection(self) -> Any:
        """A HEAD answered with Content-Length: 1234 and no body, then a GET on the same pooled connection, gets its own answer."""
        upstream = ScriptedUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget",
        )
        url = self.proxy_to(upstream)
        response, body = yield self.fetch(b"HEAD", url)
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"1234"])
        response, body = yield self.fetch(b"GET", url)
        self.assertEqual((response.code, body), (200, b"get"))
        self.assertEqual(len(upstream.connections), 1)
        self.assertEqual([head.split(b" ")[0] for head in upstream.heads], [b"HEAD", b"GET"])

    @inlineCallbacks
    def test_bytes_past_content_length_never_answer_the_next_client(self) -> Any:
        """Bytes past Content-Length (a smuggled second answer) close the connection; the next client gets its own answer."""
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
        upstream = ScriptedUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + smuggled,
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
        )
        url = self.proxy_to(upstream)
        _, first = yield self.fetch(b"GET", url)
        _, second = yield self.fetch(b"GET", url)
        self.assertEqual((first, second), (b"first", b"second"))
        self.assertEqual(len(upstream.connections), 2)
        yield upstream.connections[0].lost  # the proxy closed it

    @inlineCallbacks
    def test_http10_answer_without_keep_alive_is_not_reused(self) -> Any:
        """An HTTP/1.0 answer without keep-alive is not followed by another request on its connection, even if the upstream keeps it open."""
        upstream = ScriptedUpstream(
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\none",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo",
        )
        url = self.proxy_to(upstream)
        _, first = yield self.fetch(b"GET", url)
        _, second = yield self.fetch(b"GET", url)
        self.assertEqual((first, second), (b"one", b"two"))
        self.assertEqual(len(upstream.connections), 2)
        self.assertEqual(len(upstream.connections[0].factory.heads), 2)

    @inlineCallbacks
    def test_interim_responses_skipped(self) -> Any:
        """100 and 103 before the answer are skipped; the client gets the final answer."""
        upstream = ScriptedUpstream(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        url = self.proxy_to(upstream)
        response, body = yield self.fetch(b"GET", url)
        self.assertEqual((response.code, body), (200, b"ok"))
        self.assertFalse(response.headers.hasHeader(b"link"))
