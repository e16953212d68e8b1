"""
A client that goes away, over real sockets: a request with an
Idempotency-Key that is with the upstream carries on without its client
(its answer is stored and replayed, the job never runs twice), within
C{--timeout}; one not yet sent whole is dropped and its key freed; a client
that leaves mid-answer is logged as C{CLIENT_GONE}, never as the upstream's
failure; a POST that may have reached the backend says C{outcomeUnknown}.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor

BODY = b'{"prompt": "a cat"}'
KEY = b"7f3c9a"


class Jobs(Resource):
    """
    A paid job per POST: each is held until the test releases it, then
    answered 201 with its number; C{head_first} sends the head and a first
    piece of the body at once, the rest on release.
    """

    isLeaf = True

    def __init__(self, head_first: bool = False) -> None:
        super().__init__()
        self.calls = 0
        self.held: list[Request] = []
        self.lost: list[Request] = []
        self.hold = True
        self.head_first = head_first

    def render(self, request: Request) -> Any:
        self.calls += 1
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        if not self.hold:
            return self.answer()
        request.notifyFinish().addErrback(lambda _: self.lost.append(request))
        self.held.append(request)
        if self.head_first:
            request.write(b'{"id": ')
        return NOT_DONE_YET

    def answer(self) -> bytes:
        return json.dumps({"id": f"video_{self.calls}"}).encode()

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            rest = self.answer()
            request.write(rest[len(b'{"id": ') :] if self.head_first else rest)
            request.finish()


class StalledUpstream(Protocol):
    """
    A raw upstream: its first connection never reads (a request body stays
    half sent); later ones read the whole request and answer 201.
    """

    def __init__(self, factory: StalledFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._length = -1
        #: body bytes received
        self.got = 0

    def connectionMade(self) -> None:
        self._factory.connections.append(self)
        if len(self._factory.connections) == 1:
            assert self.transport is not None
            # A small, fixed receive buffer (no autotuning): the body cannot all fit in the kernel.
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # type: ignore[attr-defined]
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.got += len(data)
        if self._length < 0:
            self._buffer += data
            head, mark, body = self._buffer.partition(b"\r\n\r\n")
            if not mark:
                return
            self._length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            self.got = len(body)
        if self.got >= self._length:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._factory.lost += 1

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.resumeProducing()  # type: ignore[attr-defined]


class StalledFactory(Factory):
    def __init__(self) -> None:
        self.connections: list[StalledUpstream] = []
        self.lost = 0

    def buildProtocol(self, addr: Any) -> StalledUpstream:
        return StalledUpstream(self)


class RawClient(Protocol):
    """A client that sends exact bytes, keeps what comes back, and can leave at any moment."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.closed.callback(None)

    def leave(self) -> Deferred[None]:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]
        return self.closed


def keyed_post(body: bytes = BODY, sent: int | None = None) -> bytes:
    head = (
        b"POST /api/proxy/videos HTTP/1.1\r\nHost: proxy.test\r\nIdempotency-Key: " + KEY + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    return head + body[:sent]


def board_groups(proxy: Any) -> dict[str, Any]:
    """The status page's error groups, by error type."""
    board = proxy.telemetry.board.snapshot(proxy.balancer.upstreams, 0, False)
    return {g["errorType"]: g for g in board["errors"]["groups"]}


class ClientGoneTests(LoopbackMixin, TestCase):
    def setup(self, jobs: Resource, **options: Any) -> tuple[str, Any]:
        _, url = self.start_upstream(jobs)
        options.setdefault("health_path", "")
        return self.start_proxy(upstream=url, **options)

    @inlineCallbacks
    def connect(self, public: str, data: bytes) -> Any:
        port = int(public.rsplit(":", 1)[1])
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        assert client.transport is not None
        client.transport.write(data)
        return client

    @inlineCallbacks
    def resend(self, public: str) -> Any:
        headers = Headers({b"Idempotency-Key": [KEY], b"Content-Type": [b"application/json"]})
        response, content = yield self.fetch(b"POST", public + "/api/proxy/videos", BODY, headers)
        return response, content

    @staticmethod
    def second_piece(jobs: Jobs, client: RawClient) -> Deferred[Any]:
        """The backend sends a second piece of its answer (the client then pauses the backend's read when slow)."""
        jobs.held[0].write(b" ")
        return eventually(lambda: b"1\r\n \r\n" in client.received, what="the second piece")  # type: ignore[no-any-return]

    def errors(self, proxy: Any) -> str:
        return generate_latest(proxy.telemetry.registry).decode()

    def board_groups(self, proxy: Any) -> dict[str, Any]:
        return board_groups(proxy)

    @inlineCallbacks
    def test_key_survives_client_leaving_before_answer(self) -> Any:
        """A client that leaves while its keyed POST is with the backend: the resend gets 409, then the first job's answer replayed; the job runs once."""
        jobs = Jobs()
        public, proxy = self.setup(jobs)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: jobs.calls == 1, what="the job reaching the backend")
        yield client.leave()
        response, content = yield self.resend(public)
        self.assertEqual(
            (response.code, json_of(content)["details"]["errorType"]), (409, "IDEMPOTENCY_IN_FLIGHT")
        )
        self.assertEqual(jobs.lost, [], "the backend's connection stays open")
        jobs.release()
        yield eventually(lambda: "CLIENT_GONE" in self.board_groups(proxy), what="the first request's end")
        response, content = yield self.resend(public)
        self.assertEqual(response.code, 201)
        self.assertEqual(json_of(content), {"id": "video_1"})
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(jobs.calls, 1)
        self.assertEqual(self.board_groups(proxy)["CLIENT_GONE"]["latest"]["status"], 499)

    @inlineCallbacks
    def test_key_survives_client_leaving_mid_answer(self) -> Any:
        """A client that leaves after the first bytes of its keyed POST's answer: the resend replays the whole answer; the job runs once."""
        jobs = Jobs(head_first=True)
        public, proxy = self.setup(jobs)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: b'{"id": ' in client.received, what="the first bytes of the answer")
        yield self.second_piece(jobs, client)
        yield client.leave()
        response, _ = yield self.resend(public)
        self.assertEqual(response.code, 409)
        jobs.release()
        yield eventually(lambda: "CLIENT_GONE" in self.board_groups(proxy), what="the first request's end")
        response, content = yield self.resend(public)
        self.assertEqual((response.code, json_of(content)), (201, {"id": "video_1"}))
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(jobs.calls, 1)
        self.assertNotIn("UPSTREAM_ABORTED", self.errors(proxy))
        self.assertEqual(self.board_groups(proxy)["CLIENT_GONE"]["latest"]["status"], 201)

    @inlineCallbacks
    def test_body_never_whole_is_not_forwarded(self) -> Any:
        """A keyed POST whose client leaves mid-body never reaches the backend, and its key stays free."""
        jobs = Jobs()
        jobs.hold = False
        public, _ = self.setup(jobs)
        client = yield self.connect(public, keyed_post(sent=5))
        yield client.leave()
        response, content = yield self.resend(public)
        self.assertEqual((response.code, json_of(content)), (201, {"id": "video_1"}))
        self.assertIsNone(response.headers.getRawHeaders(b"idempotent-replayed"))
        self.assertEqual(jobs.calls, 1)

    @inlineCallbacks
    def test_body_not_sent_whole_frees_key(self) -> Any:
        """A keyed POST whose client leaves while its large body is still being sent upstream is dropped: the resend is forwarded."""
        upstream = StalledFactory()
        port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        public, proxy = self.start_proxy(
            upstream=f"http://127.0.0.1:{port.getHost().port}/api", health_path=""
        )
        body = b"x" * (16 * 1024 * 1024)
        client = yield self.connect(public, keyed_post(body))
        yield eventually(lambda: upstream.connections, what="the proxy connecting upstream")
        yield client.leave()
        yield eventually(
            lambda: "CLIENT_GONE" in board_groups(proxy), what="the proxy seeing the client leave"
        )
        upstream.connections[0].resume()
        yield eventually(lambda: upstream.lost == 1, what="the half-sent request's connection closing")
        self.assertLess(upstream.connections[0].got, len(body), "the backend never got the whole body")
        client = yield self.connect(public, keyed_post(body))
        yield eventually(lambda: b"\r\n\r\n{}" in client.received, what="the resend's answer")
        self.assertTrue(client.received.startswith(b"HTTP/1.1 201 "), client.received[:200])
        self.assertEqual(len(upstream.connections), 2)

    @inlineCallbacks
    def test_carried_on_exchange_ends_at_timeout(self) -> Any:
        """A keyed POST carried on for a client that left still ends at --timeout: the backend's connection is closed and the key freed."""
        jobs = Jobs()
        public, _ = self.setup(jobs, timeout=0.5)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: jobs.calls == 1, what="the job reaching the backend")
        yield client.leave()
        yield eventually(lambda: len(jobs.lost) == 1, what="the backend's connection closing")
        jobs.hold = False
        response, content = yield self.resend(public)
        self.assertEqual((response.code, json_of(content)), (201, {"id": "video_2"}))
        self.assertEqual(jobs.calls, 2, "the first try timed out: nothing was stored")

    @inlineCallbacks
    def test_carried_on_answer_ends_at_timeout(self) -> Any:
        """An answer read for a key after its client left stops at --timeout when the backend never finishes it."""
        jobs = Jobs(head_first=True)
        public, _ = self.setup(jobs, timeout=0.5)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: b'{"id": ' in client.received, what="the first bytes of the answer")
        yield client.leave()
        yield eventually(lambda: len(jobs.lost) == 1, what="the backend's connection closing")
        jobs.head_first, jobs.hold = False, False
        response, content = yield self.resend(public)
        self.assertEqual((response.code, json_of(content)), (201, {"id": "video_2"}))

    @inlineCallbacks
    def test_carried_on_answer_ends_at_deadline(self) -> Any:
        """With --deadline, an answer read for a key after its client left stops at the deadline, well before --timeout."""
        jobs = Jobs(head_first=True)
        public, _ = self.setup(jobs, timeout=30, deadline=1)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: b'{"id": ' in client.received, what="the first bytes of the answer")
        yield client.leave()
        yield eventually(lambda: len(jobs.lost) == 1, timeout=5, what="the backend's connection closing")

    @inlineCallbacks
    def test_answer_too_large_to_store_is_dropped(self) -> Any:
        """An answer larger than --idempotency-max-body is not read on for a client that left: the backend's connection closes at once."""
        jobs = Jobs(head_first=True)
        public, _ = self.setup(jobs, idempotency_max_body=10)
        client = yield self.connect(public, keyed_post())
        yield eventually(lambda: b'{"id": ' in client.received, what="the first bytes of the answer")
        yield client.leave()
        jobs.held[0].write(b"x" * 100)
        yield eventually(lambda: len(jobs.lost) == 1, timeout=3, what="the backend's connection closing")

    @inlineCallbacks
    def test_unkeyed_client_leaving_cancels(self) -> Any:
        """A POST without a key is dropped when its client leaves: the backend's connection is closed."""
        jobs = Jobs()
        public, proxy = self.setup(jobs)
        client = yield self.connect(public, keyed_post().replace(b"Idempotency-Key: 7f3c9a\r\n", b""))
        yield eventually(lambda: jobs.calls == 1, what="the job reaching the backend")
        yield client.leave()
        yield eventually(lambda: len(jobs.lost) == 1, what="the backend's connection closing")
        self.assertEqual(self.board_groups(proxy)["CLIENT_GONE"]["latest"]["status"], 499)


class MidAnswerTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_client_leaving_mid_stream_is_client_gone(self) -> Any:
        """A client that closes a server-sent-events stream is logged CLIENT_GONE with the status it got, never as the backend's failure."""
        jobs = Jobs(head_first=True)
        _, url = self.start_upstream(jobs)
        public, proxy = self.start_proxy(upstream=url, health_path="")
        port = int(public.rsplit(":", 1)[1])
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(b"GET /api/proxy/videos/video_1/events HTTP/1.1\r\nHost: p\r\n\r\n")
        yield eventually(lambda: b'{"id": ' in client.received, what="the first event")
        yield ClientGoneTests.second_piece(jobs, client)
        yield client.leave()
        yield eventually(lambda: len(jobs.lost) == 1, what="the backend's connection closing")
        yield eventually(lambda: "CLIENT_GONE" in ClientGoneTests.board_groups(self, proxy))  # type: ignore[arg-type]
        groups = board_groups(proxy)
        self.assertEqual(set(groups), {"CLIENT_GONE"})
        self.assertEqual(groups["CLIENT_GONE"]["latest"]["status"], 201)
        text = generate_latest(proxy.telemetry.registry).decode()
        self.assertIn('sora2proxy_errors_total{error_type="CLIENT_GONE"} 1.0', text)
        self.assertNotIn("UPSTREAM_ABORTED", text)

    @inlineCallbacks
    def test_upstream_dying_mid_answer_is_upstream_aborted(self) -> Any:
        """A backend that dies mid-answer is still logged UPSTREAM_ABORTED (and the client sees a cut transfer)."""
        jobs = Jobs(head_first=True)
        _, url = self.start_upstream(jobs)
        public, proxy = self.start_proxy(upstream=url, health_path="")
        port = int(public.rsplit(":", 1)[1])
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(b"GET /api/proxy/videos/video_1/events HTTP/1.1\r\nHost: p\r\n\r\n")
        yield eventually(lambda: b'{"id": ' in client.received, what="the first event")
        jobs.held[0].transport.abortConnection()
        yield client.closed
        self.assertNotIn(b"0\r\n\r\n", client.received, "never a complete-looking answer")
        yield eventually(lambda: board_groups(proxy), what="the request's end")
        self.assertEqual(set(board_groups(proxy)), {"UPSTREAM_ABORTED"})


class OutcomeUnknownTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_plain_post_reached_without_answer(self) -> Any:
        """A POST without a key that reached a backend which closed without answering says outcomeUnknown, and "1 attempt"."""
        upstream = RecordingUpstream("close")
        _, url = self.start_upstream(upstream)
        public, _ = self.start_proxy(upstream=url, health_path="")
        response, content = yield self.fetch(b"POST", public + "/api/proxy/videos", BODY)
        error = json_of(content)
        self.assertEqual((response.code, error["details"]["errorType"]), (502, "UPSTREAM_ERROR"))
        self.assertIs(error["details"]["outcomeUnknown"], True)
        self.assertIn("(1 attempt).", error["message"])
        self.assertEqual(len(upstream.seen), 1)

    @inlineCallbacks
    def test_refused_get_is_not_unknown(self) -> Any:
        """A request that never reached the backend (refused) says nothing of an unknown outcome, and "3 attempts"."""
        from .helpers import refused_port

        public, _ = self.start_proxy(
            upstream=f"http://127.0.0.1:{refused_port()}/api", health_path="", backoff=0.01
        )
        response, content = yield self.fetch(b"POST", public + "/api/proxy/videos", BODY)
        error = json_of(content)
        self.assertEqual(response.code, 503)
        self.assertNotIn("outcomeUnknown", error["details"])
        self.assertIn("(3 attempts).", error["message"])
