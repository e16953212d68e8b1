"""
What the proxy's own answers say: a suggestion of each error type's own
(only the unreachable family says C{--suggestion}), a C{--spawn} backend
that exited named with its exit status and output, the registered reason
phrase of every status (relayed ones over loopback), replays counted apart
from errors, and internals (upstream URLs, reasons, the configured
suggestion) only for loopback clients or with C{--dev}, always in the log.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from attrs import define
from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseFailed
from twisted.web.http_headers import Headers

from sora2proxy import ProxyConfig
from sora2proxy._errors import ERROR_KINDS, ErrorKind, reason_phrase
from sora2proxy.forward._messages import UNREACHABLE, public_words, suggestion_for
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.http._site import ProxySite
from sora2proxy.idempotency._guard import (
    IDEMPOTENCY_IN_FLIGHT,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    IDEMPOTENCY_KEY_REUSED,
    IDEMPOTENCY_STORE_FULL,
    IDEMPOTENCY_STORE_UNAVAILABLE,
)

from .helpers import LoopbackMixin, MemoryHarness, RecordingUpstream, parts_for, reactor, refused_port
from .test_cli import get, start_proxy_process
from .test_resource import ScriptedAgent, body_json, scripted

#: The error types of the Idempotency-Key guard (not in ERROR_KINDS: they are its own).
IDEMPOTENCY_KINDS = (
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    IDEMPOTENCY_IN_FLIGHT,
    IDEMPOTENCY_KEY_REUSED,
    IDEMPOTENCY_STORE_UNAVAILABLE,
    IDEMPOTENCY_STORE_FULL,
)

#: Written out from the IANA HTTP Status Code Registry (RFC 9110 names),
#: for the codes Twisted's table lacks or Python 3.11 names the old way.
IANA = {
    102: "Processing",
    103: "Early Hints",
    208: "Already Reported",
    226: "IM Used",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    423: "Locked",
    424: "Failed Dependency",
    425: "Too Early",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    451: "Unavailable For Legal Reasons",
    506: "Variant Also Negotiates",
    508: "Loop Detected",
    511: "Network Authentication Required",
}


class ReasonPhraseTests(SynchronousTestCase):
    def test_registry_phrases(self) -> None:
        """Every registered status has its IANA phrase, including those Twisted's table lacks."""
        for code, phrase in IANA.items():
            self.assertEqual(reason_phrase(code, b"Unknown Status"), phrase.encode(), code)
        self.assertEqual(reason_phrase(200, b"Everything Fine"), b"OK")
        self.assertEqual(reason_phrase(503), b"Service Unavailable")

    def test_unregistered_status(self) -> None:
        """A status the registry lacks keeps the upstream's phrase, unless it holds control bytes."""
        self.assertEqual(reason_phrase(599, b"Network Connect Timeout"), b"Network Connect Timeout")
        self.assertEqual(reason_phrase(299, b"caf\xe9 ok\tx"), b"caf\xe9 ok\tx")
        self.assertEqual(reason_phrase(599, b"x\rSet-Cookie: a=1"), b"")
        self.assertEqual(reason_phrase(599, b"x\x00"), b"")
        self.assertEqual(reason_phrase(599), b"")


class _Collect(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.data)


def exchange(port: int, request: bytes) -> Deferred[bytes]:
    """Send raw bytes to a loopback port; fire with all bytes read until it closes."""
    collect = _Collect(request)
    connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), collect)
    return collect.done


class _Canned(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            assert self.transport is not None
            self.transport.write(self.factory.answer)  # type: ignore[attr-defined]
            self.transport.loseConnection()


class PhraseLoopbackTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def status_line(self, url: str, target: bytes = b"/api/proxy/x", extra: bytes = b"") -> Any:
        public, _ = self.start_proxy(upstream=url, health_path="", attempts=1, max_body=10)
        port = int(public.rsplit(":", 1)[1])
        answer = yield exchange(
            port, b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + extra + b"\r\n"
        )
        return answer.split(b"\r\n", 1)[0]

    @inlineCallbacks
    def test_twisted_upstream_422_and_429(self) -> Any:
        """A real upstream's 422 and 429 (Twisted says "Unknown Status") reach the client with their phrases."""
        for code, phrase in (
            (422, b"Unprocessable Content"),
            (429, b"Too Many Requests"),
            (425, b"Too Early"),
        ):
            _, url = self.start_upstream(RecordingUpstream(f"status:{code}"))
            line = yield self.status_line(url)
            self.assertEqual(line, b"HTTP/1.1 %d %s" % (code, phrase))

    @inlineCallbacks
    def test_raw_upstream_phrases(self) -> Any:
        """A registered status gets the registry's phrase whatever the upstream wrote; another keeps its own."""
        for sent, seen in (
            (b"HTTP/1.1 422 Unprocessable Entity", b"HTTP/1.1 422 Unprocessable Content"),
            (b"HTTP/1.1 200 Everything Fine", b"HTTP/1.1 200 OK"),
            (b"HTTP/1.1 599 Network Connect Timeout", b"HTTP/1.1 599 Network Connect Timeout"),
        ):
            factory = Factory.forProtocol(_Canned)
            factory.answer = sent + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"  # type: ignore[attr-defined]
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            line = yield self.status_line(f"http://127.0.0.1:{port.getHost().port}/api")
            self.assertEqual(line, seen)

    @inlineCallbacks
    def test_own_errors(self) -> Any:
        """The proxy's own 404 and 413 carry their registry phrases."""
        url = f"http://127.0.0.1:{refused_port()}/api"
        line = yield self.status_line(url, b"/elsewhere")
        self.assertEqual(line, b"HTTP/1.1 404 Not Found")
        line = yield self.status_line(url, b"/api/proxy/x", b"Content-Length: 11\r\n")
        self.assertEqual(line, b"HTTP/1.1 413 Content Too Large")


class SuggestionTests(SynchronousTestCase):
    def details(self, harness: MemoryHarness, d: Deferred[Any], advance: float = 0) -> dict[str, Any]:
        harness.flush()
        for _ in range(10 if advance else 0):
            harness.advance(advance / 10)
        response = self.successResultOf(d)
        body = body_json(harness, response)
        return {"status": response.code, **body["details"], "message": body["message"]}

    def test_each_type_its_own(self) -> None:
        """404, 504, 502, 400 and 500 each suggest something about their own failure, never --suggestion."""
        harness = MemoryHarness(RecordingUpstream(), suggestion="Run: make api")
        found = self.details(harness, harness.client.get("http://proxy.test/elsewhere"))
        self.assertEqual((found["status"], found["errorType"]), (404, "NOT_FOUND"))
        self.assertIn("/api/proxy/", found["suggestion"])
        refused = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a%5cb"))
        self.assertEqual(refused["status"], 400)
        self.assertIn("dot segments", refused["suggestion"])

        harness, _ = scripted([None], attempts=1, timeout=2, suggestion="Run: make api")
        timed_out = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a"), advance=3)
        self.assertEqual((timed_out["status"], timed_out["errorType"]), (504, "TIMEOUT"))
        self.assertIn("--timeout (2 s)", timed_out["suggestion"])

        harness, _ = scripted(
            [ResponseFailed([Failure(ConnectionLost())])], attempts=1, suggestion="Run: make api"
        )
        reset = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a"))
        self.assertEqual((reset["status"], reset["errorType"]), (502, "UPSTREAM_ERROR"))
        self.assertIn("not valid HTTP", reset["suggestion"])

        harness, _ = scripted([ZeroDivisionError()], attempts=1, suggestion="Run: make api")
        bug = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a"))
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual((bug["status"], bug["errorType"]), (500, "INTERNAL"))
        self.assertIn("bug in the proxy", bug["suggestion"])
        for answer in (found, refused, timed_out, reset, bug):
            self.assertNotIn("make api", answer["suggestion"])

    def test_unreachable_family(self) -> None:
        """ECONNREFUSED and HEALTH_CHECK_FAILED answer with --suggestion; so does CIRCUIT_OPEN, and only those three."""
        harness, _ = scripted([ConnectionRefusedError()] * 3, suggestion="Run: make api", backoff=0.1)
        refused = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a"), advance=1)
        self.assertEqual((refused["errorType"], refused["suggestion"]), ("ECONNREFUSED", "Run: make api"))
        harness, _ = scripted([], health=True, suggestion="Run: make api")
        assert harness.health is not None
        harness.health.mark_down("connection refused")
        down = self.details(harness, harness.client.get("http://proxy.test/api/proxy/a"))
        self.assertEqual((down["errorType"], down["suggestion"]), ("HEALTH_CHECK_FAILED", "Run: make api"))
        config = ProxyConfig(suggestion="Run: make api")
        self.assertEqual(UNREACHABLE, {"ECONNREFUSED", "HEALTH_CHECK_FAILED", "CIRCUIT_OPEN"})
        for name, kind in ERROR_KINDS.items():
            said = suggestion_for(kind, config) == "Run: make api"
            self.assertEqual(said, name in UNREACHABLE, name)

    def test_every_kind_fits(self) -> None:
        """Every error type has a suggestion of its own; a 400-family one says what to change, never to retry."""
        config = ProxyConfig(suggestion="Run: make api")
        generic = suggestion_for(ErrorKind("SOMETHING_NEW", 500, "New"), config)
        kinds = [*ERROR_KINDS.values(), *IDEMPOTENCY_KINDS]
        for kind in kinds:
            said = suggestion_for(kind, config)
            self.assertNotEqual(said, generic, kind.error_type)
            if kind.status < 500 and not kind.retry_after:
                self.assertNotIn("retry later", said.lower(), kind.error_type)
                self.assertFalse(said.lower().startswith("retry"), kind.error_type)
            if kind.status >= 500 and kind.retry_after:
                public = public_words(kind, "m", said, config)[1]
                self.assertIn("Retry-After", public, kind.error_type)
        self.assertIn("one Idempotency-Key header", suggestion_for(IDEMPOTENCY_KEY_INVALID, config))


@define
class ExitedChild:
    """A --spawn child as the errors see it."""

    name: str = "demo"
    alive: bool = False
    last_exit: str | None = "status 3"
    exited_at: float | None = 95.0
    restart_at: float | None = 104.0
    last_output: Sequence[str] = ("Error: listen EADDRINUSE: address already in use :::3101",)


class SpawnNoteTests(SynchronousTestCase):
    def error_for(self, child: ExitedChild, path: str = "/api/proxy/a") -> dict[str, Any]:
        from treq.testing import StubTreq

        config = ProxyConfig(upstream="http://backend.test:3101/api", attempts=1, health_path="")
        clock = Clock()
        clock.advance(100)
        agent = ScriptedAgent(clock, [ConnectionRefusedError()])
        resource = ProxyResource(parts_for(config, clock, agent, children=[child]))
        client = StubTreq(resource)
        d = client.get("http://proxy.test" + path)
        client.flush()
        response = self.successResultOf(d)
        content = client.content(response)
        client.flush()
        body = json.loads(self.successResultOf(content))
        return {"message": body["message"], **body["details"]}

    def test_exited_child_named(self) -> None:
        """A refused backend run by --spawn that exited: the answer names it, its status, its restart and its output."""
        error = self.error_for(ExitedChild())
        self.assertEqual(error["errorType"], "ECONNREFUSED")
        self.assertIn("--spawn command demo exited (status 3)", error["message"])
        self.assertIn("restarts in 4 s", error["message"])
        self.assertIn("[demo]", error["suggestion"])
        self.assertIn("EADDRINUSE", error["suggestion"])
        self.assertNotIn("npm", error["suggestion"])

    def test_running_child_not_named(self) -> None:
        """A child that runs and last exited long ago is not blamed; other errors never name it."""
        error = self.error_for(ExitedChild(alive=True, exited_at=10.0, restart_at=None))
        self.assertEqual(error["suggestion"], "Run: npm run dev:api")
        self.assertNotIn("--spawn", error["message"])
        recently = self.error_for(ExitedChild(alive=True, exited_at=90.0, restart_at=None))
        self.assertIn("exited (status 3) at 00:01:30 UTC and was restarted", recently["message"])
        found = self.error_for(ExitedChild(), "/elsewhere")
        self.assertNotIn("--spawn", found["message"] + found["suggestion"])


class SpawnProcessTests(SynchronousTestCase):
    def test_spawned_backend_that_exits(self) -> None:
        """twistd with a --spawn backend that exits at once: the 503 says so, with its status and last output."""
        command = f"demo={sys.executable} -c \"print('cannot start: port taken'); raise SystemExit(3)\""
        proxy, port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{refused_port()}/api", "--health-path", "",
            "--attempts", "1", "--spawn", command,
        )  # fmt: skip
        proxy.wait_for(r"\[demo\] exited \(status 3\)")
        status, _, body = get(f"http://127.0.0.1:{port}/api/proxy/videos")
        self.assertEqual(status, 503)
        answer = json.loads(body)
        self.assertIn("--spawn command demo exited (status 3)", answer["message"])
        self.assertIn("cannot start: port taken", answer["details"]["suggestion"])


#: An internal upstream URL that must not reach clients outside the proxy's host.
INTERNAL_URL = "http://10.1.2.3:3101/api"


class InternalsTests(SynchronousTestCase):
    """A real ProxyChannel over a StringTransport whose peer address the test picks (no sockets)."""

    def answer(
        self, peer: Any, extra: bytes = b"", dev: bool = False, head: bytes = b"GET /api/proxy/users HTTP/1.1"
    ) -> tuple[bytes, bytes]:
        config = ProxyConfig(upstream=INTERNAL_URL, health_path="", backoff=0.1, dev=dev, max_body=10)
        clock = Clock()
        agent = ScriptedAgent(clock, [ConnectionRefusedError()] * 3)
        site = ProxySite(ProxyResource(parts_for(config, clock, agent)), config, reactor=clock)
        channel = site.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.1", 3200), peerAddress=peer)
        channel.makeConnection(transport)
        channel.dataReceived(head + b"\r\nHost: api.example\r\nConnection: close\r\n" + extra + b"\r\n")
        for _ in range(10):
            clock.advance(0.1)
        head_bytes, _, body = transport.value().partition(b"\r\n\r\n")
        return head_bytes, body

    def test_remote_client_reads_no_internals(self) -> None:
        """A client outside the host gets the error, message, type, attempts, duration and id, and a generic suggestion."""
        head, body = self.answer(IPv4Address("TCP", "203.0.113.7", 50000))
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertNotIn(b"10.1.2.3", head + body)
        answer = json.loads(body)
        details = answer["details"]
        self.assertEqual(answer["error"], "Backend unavailable")
        self.assertEqual((details["errorType"], details["attempts"]), ("ECONNREFUSED", 3))
        self.assertEqual(
            set(details),
            {"errorType", "attempts", "durationMs", "suggestion", "requestId", "traceId", "retryable"},
        )
        self.assertEqual(
            details["suggestion"],
            "The service is unavailable for a moment: retry after the Retry-After seconds.",
        )
        self.assertIn("refused the connection", answer["message"])

    def test_loopback_client_reads_everything(self) -> None:
        """A loopback client (IPv4, IPv6, IPv4-mapped) gets the upstream, the reason and --suggestion."""
        for peer in (
            IPv4Address("TCP", "127.0.0.1", 50000),
            IPv4Address("TCP", "127.3.4.5", 50000),
            IPv6Address("TCP", "::1", 50000),
            IPv6Address("TCP", "::ffff:127.0.0.1", 50000),
        ):
            _, body = self.answer(peer)
            details = json.loads(body)["details"]
            self.assertEqual(details["upstream"], INTERNAL_URL, peer)
            self.assertEqual(details["suggestion"], "Run: npm run dev:api")
            self.assertEqual(details["reason"], "connection refused")
            self.assertIn(INTERNAL_URL, json.loads(body)["message"])

    def test_relayed_and_dev(self) -> None:
        """A loopback peer relaying for another client reads no internals; with --dev every client does."""
        loopback = IPv4Address("TCP", "127.0.0.1", 50000)
        for header in (
            b"X-Forwarded-For: 198.51.100.2\r\n",
            b"Forwarded: for=198.51.100.2\r\n",
            b"X-Real-IP: 1.2.3.4\r\n",
        ):
            _, body = self.answer(loopback, header)
            self.assertNotIn(b"10.1.2.3", body, header)
        _, body = self.answer(IPv4Address("TCP", "203.0.113.7", 50000), dev=True)
        self.assertEqual(json.loads(body)["details"]["upstream"], INTERNAL_URL)
        _, body = self.answer(IPv6Address("TCP", "2001:db8::1", 50000))
        self.assertNotIn(b"10.1.2.3", body)

    def test_browser_page_redacted(self) -> None:
        """A remote browser's HTML error page holds no internals either."""
        head, body = self.answer(IPv4Address("TCP", "203.0.113.7", 50000), b"Accept: text/html\r\n")
        self.assertIn(b"text/html", head)
        self.assertIn(b"ECONNREFUSED", body)
        self.assertNotIn(b"10.1.2.3", body)
        self.assertNotIn(b"npm run", body)

    def test_body_too_large(self) -> None:
        """413: a remote client is told the limit; only a loopback client is told the option that raises it."""
        post = b"POST /api/proxy/x HTTP/1.1"
        _, body = self.answer(IPv4Address("TCP", "203.0.113.7", 50000), b"Content-Length: 11\r\n", head=post)
        details = json.loads(body)["details"]
        self.assertEqual(details["suggestion"], "Send at most 10 bytes.")
        self.assertNotIn("upstream", details)
        _, body = self.answer(IPv4Address("TCP", "127.0.0.1", 50000), b"Content-Length: 11\r\n", head=post)
        self.assertIn("--max-body", json.loads(body)["details"]["suggestion"])

    def test_logged_whole(self) -> None:
        """The details a remote client does not read are in the log, under its request id."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, body = self.answer(IPv4Address("TCP", "203.0.113.7", 50000))
        request_id = json.loads(body)["details"]["requestId"]
        [event] = [e for e in events if "error_type" in e and "suggestion" in e]
        self.assertEqual(event["request_id"], request_id)
        self.assertEqual(event["upstream"], INTERNAL_URL)
        self.assertEqual(event["suggestion"], "Run: npm run dev:api")
        self.assertEqual(event["reason"], "connection refused")


class ReplayCountTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_replay_is_not_an_error(self) -> Any:
        """A replayed answer counts in sora2proxy_idempotent_replays_total, never as an error."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        public, proxy = self.start_proxy(upstream=url, health_path="")
        headers = Headers({b"Idempotency-Key": [b"job-1"]})
        for _ in range(2):
            response, _ = yield self.fetch(b"POST", public + "/api/proxy/jobs", b"{}", headers)
        self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        self.assertEqual(len(upstream.seen), 1)
        text = generate_latest(proxy.telemetry.registry).decode()
        self.assertIn("sora2proxy_idempotent_replays_total 1.0", text)
        self.assertNotIn("IDEMPOTENT_REPLAY", text)
        board = proxy.telemetry.board.snapshot(proxy.balancer.upstreams, 0, False)
        self.assertEqual(board["errors"]["groups"], [])
        self.assertEqual(board["rates"]["failures"], 0)


class TunnelInternalsTests(LoopbackMixin, TestCase):
    HANDSHAKE = (
        b"GET /api/proxy/ws HTTP/1.1\r\nHost: p\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )

    @inlineCallbacks
    def test_handshake_error_redacted(self) -> Any:
        """A WebSocket handshake that times out: a relayed client reads no upstream; a local one does."""
        _, url = self.start_upstream(RecordingUpstream("hang"))
        public, _ = self.start_proxy(upstream=url, health_path="", timeout=0.3)
        port = int(public.rsplit(":", 1)[1])
        relayed = yield exchange(port, self.HANDSHAKE + b"X-Forwarded-For: 198.51.100.2\r\n\r\n")
        head, _, body = relayed.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 504 Gateway Timeout"), head)
        details = json.loads(body)["details"]
        self.assertEqual(details["errorType"], "TIMEOUT")
        self.assertNotIn("upstream", details)
        self.assertNotIn(url.encode(), body)
        local = yield exchange(port, self.HANDSHAKE + b"\r\n")
        self.assertEqual(json.loads(local.partition(b"\r\n\r\n")[2])["details"]["upstream"], url)
