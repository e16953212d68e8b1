"""
HTTP fidelity over real sockets: body limits and 100-continue, hop-by-hop
headers, forwarding headers, repeated headers, redirects, bodiless answers,
content encodings, and TLS on both sides.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import trustme
from twisted.internet import ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .helpers import LoopbackMixin, RecordingUpstream, json_of, reactor, wait


class FidelityUpstream(Resource):
    """Answers by path: headers, redirects, bodiless statuses, gzip."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.base = ""
        self.seen: list[Request] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(request)
        path = request.path.decode()
        if path.endswith("/health"):
            return b"ok"
        if path.endswith("/hop"):
            request.setHeader(b"connection", b"x-private")
            request.setHeader(b"x-private", b"secret")
            request.setHeader(b"keep-alive", b"timeout=5")
            request.setHeader(b"proxy-authenticate", b"Basic")
            request.setHeader(b"x-public", b"yes")
            return b"hop"
        if path.endswith("/repeated"):
            for name, values in ((b"set-cookie", [b"a=1", b"b=2", b"c=3"]), (b"vary", [b"Accept", b"Origin"]),
                                 (b"link", [b"</a>; rel=preload", b"</b>; rel=preload"])):  # fmt: skip
                request.responseHeaders.setRawHeaders(name, values)
            return b"r"
        if path.endswith("/redirect-absolute"):
            request.setResponseCode(302)
            request.setHeader(b"location", (self.base + "/login?next=%2Fhome").encode())
            request.setHeader(b"content-location", (self.base + "/here").encode())
            return b""
        if path.endswith("/redirect-path"):
            request.setResponseCode(301)
            request.setHeader(b"location", b"/api/videos/2")
            return b""
        if path.endswith("/redirect-spelled"):
            request.setResponseCode(302)
            scheme, rest = self.base.split("://", 1)
            request.setHeader(b"location", (scheme.upper() + "://" + rest + "/a").encode())
            request.setHeader(b"content-location", ("//" + rest + "/b").encode())
            return b""
        if path.endswith("/redirect-elsewhere"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"https://cdn.example.test/video.mp4")
            return b""
        if path.endswith("/no-content"):
            request.setResponseCode(204)
            return b""
        if path.endswith("/not-modified"):
            request.setResponseCode(304)
            request.setHeader(b"etag", b'"v1"')
            return b""
        if path.endswith("/gzip"):
            request.setHeader(b"content-encoding", b"gzip")
            request.setHeader(b"content-type", b"application/json")
            return gzip.compress(b'{"compressed": true}', mtime=0)
        return json.dumps({"ok": True}).encode()


class Raw(Protocol):
    """Sends bytes, collects everything the server says."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()
        self.waiting: tuple[bytes, Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and self.waiting[0] in self.received:
            _, d = self.waiting
            self.waiting = None
            d.callback(self.received)

    def wait_for(self, marker: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if marker in self.received:
            d.callback(self.received)
        else:
            self.waiting = (marker, d)
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(self.received)


class FidelityTests(LoopbackMixin, TestCase):
    def setup_proxy(self, **options: Any) -> tuple[str, FidelityUpstream, str]:
        upstream = FidelityUpstream()
        _, url = self.start_upstream(upstream)
        upstream.base = url
        options.setdefault("health_path", "")
        proxy, _ = self.start_proxy(upstream=url, **options)
        return proxy, upstream, url

    @inlineCallbacks
    def raw(self, proxy: str, data: bytes, until: bytes | None = None) -> Any:
        port = int(proxy.rsplit(":", 1)[1])
        client = Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(data)
        if until is not None:
            received = yield client.wait_for(until)
            client.transport.loseConnection()
            return received
        received = yield client.closed
        return received

    @inlineCallbacks
    def test_body_too_large_before_reading(self) -> Any:
        """A Content-Length over --max-body gets 413 JSON at once, without 100 Continue or reading the body."""
        proxy, upstream, _ = self.setup_proxy(max_body=1000)
        received = yield self.raw(
            proxy,
            b"POST /api/proxy/upload HTTP/1.1\r\nHost: p\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n",
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)
        self.assertNotIn(b"100 Continue", received)
        body = json.loads(received.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["details"]["errorType"], "BODY_TOO_LARGE")
        self.assertEqual(upstream.seen, [])

    @inlineCallbacks
    def test_chunked_body_too_large(self) -> Any:
        """A chunked body that grows past --max-body gets 413 and is not forwarded."""
        proxy, upstream, _ = self.setup_proxy(max_body=100)
        chunk = b"x" * 80
        received = yield self.raw(
            proxy,
            b"POST /api/proxy/upload HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"50\r\n" + chunk + b"\r\n") * 3
            + b"0\r\n\r\n",
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)
        self.assertEqual(upstream.seen, [])

    @inlineCallbacks
    def test_expect_continue(self) -> Any:
        """Expect: 100-continue gets 100 Continue, then the body is forwarded with its length."""
        proxy, _, _ = self.setup_proxy()
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        port = int(proxy.rsplit(":", 1)[1])
        client = Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(
            b"PUT /api/proxy/up HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        yield client.wait_for(b"100 Continue")
        client.transport.write(b"hello")
        received = yield client.wait_for(b'"body": "hello"')
        client.transport.loseConnection()
        self.assertIn(b"HTTP/1.1 200", received)
        self.assertEqual(upstream.seen[0].body, b"hello")
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"content-length"), [b"5"])
        self.assertFalse(upstream.seen[0].headers.hasHeader(b"expect"))

    @inlineCallbacks
    def test_hop_by_hop_response_headers_removed(self) -> Any:
        """Connection, what it names, Keep-Alive and Proxy-Authenticate never reach the client."""
        from twisted.internet.protocol import Factory

        class RawUpstream(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nConnection: x-private, close\r\nX-Private: secret\r\n"
                    b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Public: yes\r\n"
                    b"Content-Length: 3\r\n\r\nhop"
                )
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(RawUpstream), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/api"
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        response, body = yield self.fetch(b"GET", proxy + "/api/proxy/hop")
        self.assertEqual(body, b"hop")
        headers = response.headers
        self.assertFalse(headers.hasHeader(b"x-private"))
        self.assertFalse(headers.hasHeader(b"proxy-authenticate"))
        self.assertNotEqual(headers.getRawHeaders(b"keep-alive"), [b"timeout=5"])
        self.assertEqual(headers.getRawHeaders(b"x-public"), [b"yes"])
        self.assertEqual(headers.getRawHeaders(b"via"), [b"1.1 sora2proxy"])

    @inlineCallbacks
    def test_forwarding_headers(self) -> Any:
        """X-Forwarded-For is appended; X-Forwarded-Proto/Host, Forwarded and Via are set; Host is the upstream's."""
        proxy, upstream, url = self.setup_proxy()
        headers = Headers(
            {
                b"x-forwarded-for": [b"203.0.113.9"],
                b"host": [b"app.example.test"],
                b"proxy-authorization": [b"Basic Zm9vOmJhcg=="],
                b"te": [b"trailers"],
            }
        )
        yield self.fetch(b"GET", proxy + "/api/proxy/x", headers=headers)
        seen = upstream.seen[0].requestHeaders
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-for"), [b"203.0.113.9, 127.0.0.1"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-host"), [b"app.example.test"])
        self.assertEqual(
            seen.getRawHeaders(b"forwarded"), [b"for=127.0.0.1;host=app.example.test;proto=http"]
        )
        self.assertEqual(seen.getRawHeaders(b"via"), [b"1.1 sora2proxy"])
        self.assertEqual(seen.getRawHeaders(b"host"), [url.split("/")[2].encode()])
        self.assertFalse(seen.hasHeader(b"proxy-authorization"))
        self.assertFalse(seen.hasHeader(b"te"))

    @inlineCallbacks
    def test_forwarding_headers_edge_cases(self) -> Any:
        """
        An HTTP/1.0 request goes on with Via 1.0; a Host with a port is a
        quoted string in Forwarded (":" is not a token character); empty
        elements the client sent are not kept before the proxy's own.
        """
        proxy, upstream, _ = self.setup_proxy()
        yield self.raw(
            proxy,
            b"GET /api/proxy/x HTTP/1.0\r\nHost: front.example:8080\r\nVia: \r\n"
            b"X-Forwarded-For: ,,\r\nForwarded: \r\n\r\n",
        )
        seen = upstream.seen[0].requestHeaders
        self.assertEqual(seen.getRawHeaders(b"via"), [b"1.0 sora2proxy"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(
            seen.getRawHeaders(b"forwarded"), [b'for=127.0.0.1;host="front.example:8080";proto=http']
        )

    @inlineCallbacks
    def test_preserve_host(self) -> Any:
        """With --preserve-host the upstream sees the client's Host."""
        proxy, upstream, _ = self.setup_proxy(preserve_host=True)
        yield self.fetch(b"GET", proxy + "/api/proxy/x", headers=Headers({b"host": [b"app.example.test"]}))
        self.assertEqual(upstream.seen[0].requestHeaders.getRawHeaders(b"host"), [b"app.example.test"])

    @inlineCallbacks
    def test_repeated_headers_kept_in_order(self) -> Any:
        """Repeated Set-Cookie, Vary and Link reach the client all, in order."""
        proxy, _, _ = self.setup_proxy()
        response, _ = yield self.fetch(b"GET", proxy + "/api/proxy/repeated")
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2", b"c=3"])
        self.assertEqual(headers.getRawHeaders(b"vary"), [b"Accept", b"Origin"])
        self.assertEqual(headers.getRawHeaders(b"link"), [b"</a>; rel=preload", b"</b>; rel=preload"])

    @inlineCallbacks
    def test_redirects_rewritten(self) -> Any:
        """
        A redirect to the upstream's own URL (its scheme in any case, or
        scheme-relative) or base path points at the proxy's prefix; others are kept.
        """
        proxy, _, _ = self.setup_proxy()
        host = proxy.split("/")[2]
        response, _ = yield self.fetch(b"GET", proxy + "/api/proxy/redirect-absolute")
        self.assertEqual(
            response.headers.getRawHeaders(b"location"),
            [f"http://{host}/api/proxy/login?next=%2Fhome".encode()],
        )
        self.assertEqual(
            response.headers.getRawHeaders(b"content-location"), [f"http://{host}/api/proxy/here".encode()]
        )
        response, _ = yield self.fetch(b"GET", proxy + "/api/proxy/redirect-path")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/api/proxy/videos/2"])
        response, _ = yield self.fetch(b"GET", proxy + "/api/proxy/redirect-spelled")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [f"http://{host}/api/proxy/a".encode()])
        self.assertEqual(
            response.headers.getRawHeaders(b"content-location"), [f"http://{host}/api/proxy/b".encode()]
        )
        response, _ = yield self.fetch(b"GET", proxy + "/api/proxy/redirect-elsewhere")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"https://cdn.example.test/video.mp4"])

    @inlineCallbacks
    def test_bodiless_answers(self) -> Any:
        """HEAD keeps Content-Length with no body; 204 and 304 have no body."""
        proxy, _, _ = self.setup_proxy()
        received = yield self.raw(proxy, b"HEAD /api/proxy/x HTTP/1.1\r\nHost: p\r\n\r\n", until=b"\r\n\r\n")
        self.assertIn(b"Content-Length: 12", received)
        self.assertTrue(received.endswith(b"\r\n\r\n"))
        for path, status in ((b"no-content", b"204"), (b"not-modified", b"304")):
            received = yield self.raw(
                proxy,
                b"GET /api/proxy/" + path + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            )
            head, _, body = received.partition(b"\r\n\r\n")
            self.assertIn(b"HTTP/1.1 " + status, head)
            self.assertEqual(body, b"")
            self.assertNotIn(b"chunked", head.lower())

    @inlineCallbacks
    def test_gzip_passes_unchanged(self) -> Any:
        """A gzip body and its Content-Encoding reach the client as sent, not decompressed."""
        proxy, _, _ = self.setup_proxy()
        response, body = yield self.fetch(b"GET", proxy + "/api/proxy/gzip")
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        compressed = gzip.compress(b'{"compressed": true}', mtime=0)
        self.assertEqual(body, compressed)
        self.assertEqual(response.length, len(compressed))  # Content-Length, not chunked


class TLSTests(LoopbackMixin, TestCase):
    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.mktemp()
        self.ca.cert_pem.write_to_path(self.ca_file)

    def start_tls_upstream(self) -> tuple[RecordingUpstream, str]:
        upstream = RecordingUpstream()
        key = ssl.PrivateCertificate.loadPEM(
            self.cert.private_key_pem.bytes() + self.cert.cert_chain_pems[0].bytes()
        )
        port = reactor.listenSSL(0, Site(upstream), key.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return upstream, f"https://127.0.0.1:{port.getHost().port}/api"

    @inlineCallbacks
    def test_https_upstream_with_private_ca(self) -> Any:
        """An https upstream signed by --upstream-ca is reached, verified."""
        _, url = self.start_tls_upstream()
        proxy, _ = self.start_proxy(upstream=url, health_path="", upstream_ca=self.ca_file)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/secure?x=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(json_of(content)["uri"], "/api/secure?x=1")

    @inlineCallbacks
    def test_unverified_upstream_is_502(self) -> Any:
        """An upstream whose certificate does not verify gets 502 UPSTREAM_TLS_ERROR, after one try."""
        upstream, url = self.start_tls_upstream()
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.01)
        response, content = yield self.fetch(b"GET", proxy + "/api/proxy/secure")
        self.assertEqual(response.code, 502)
        details = json_of(content)["details"]
        self.assertEqual(details["errorType"], "UPSTREAM_TLS_ERROR")
        self.assertEqual(details["attempts"], 1)
        self.assertIn("--upstream-ca", details["suggestion"])
        self.assertEqual(upstream.seen, [])

    @inlineCallbacks
    def test_tls_listener(self) -> Any:
        """A --listen ssl: endpoint serves the proxy over TLS, and X-Forwarded-Proto says https."""
        from twisted.internet.endpoints import serverFromString

        from sora2proxy import ProxyConfig, build_proxy
        from sora2proxy.http._site import ProxySite

        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        key_file = self.mktemp()
        self.cert.private_key_and_cert_chain_pem.write_to_path(key_file)
        config = ProxyConfig(upstream=url, health_path="")
        proxy = build_proxy(config, reactor)
        endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_file}")
        port = yield endpoint.listen(ProxySite(proxy.resource, config))
        self.addCleanup(port.stopListening)
        self.addCleanup(proxy.service.stopService)
        trust = ssl.Certificate.loadPEM(self.ca.cert_pem.bytes())

        class Policy(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return ssl.optionsForClientTLS(hostname.decode(), trustRoot=trust)

        agent = Agent(reactor, Policy(), pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(b"GET", b"https://localhost:%d/api/proxy/t" % port.getHost().port)
        yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"x-forwarded-proto"), [b"https"])


class WebSocketEdgeTests(LoopbackMixin, TestCase):
    HANDSHAKE = (
        b"GET /api/proxy/ws HTTP/1.1\r\nHost: p\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    @inlineCallbacks
    def send(self, proxy: str) -> Any:
        port = int(proxy.rsplit(":", 1)[1])
        client = Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(self.HANDSHAKE)
        received = yield client.closed
        return received

    @inlineCallbacks
    def test_refused_upgrade_passed_on(self) -> Any:
        """An upstream that refuses the upgrade (403) has its answer passed on, then the connection closes."""
        upstream = RecordingUpstream("status:403")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        received = yield self.send(proxy)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 403"), head)
        self.assertIn(b"Connection: close", head)
        self.assertIn(b"x-request-id: ", head.lower())
        self.assertEqual(body, b'{"from":"upstream"}')
        seen = upstream.seen[0].headers
        self.assertEqual(seen.getRawHeaders(b"upgrade"), [b"websocket"])
        self.assertEqual(seen.getRawHeaders(b"sec-websocket-key"), [b"dGhlIHNhbXBsZSBub25jZQ=="])

    @inlineCallbacks
    def test_hanging_handshake_times_out(self) -> Any:
        """An upstream that never answers the handshake gives 504 TIMEOUT after --timeout."""
        upstream = RecordingUpstream("hang")
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", timeout=0.3)
        received = yield self.send(proxy)
        self.assertTrue(received.startswith(b"HTTP/1.1 504"), received)
        self.assertEqual(json.loads(received.partition(b"\r\n\r\n")[2])["details"]["errorType"], "TIMEOUT")

    @inlineCallbacks
    def test_health_gate_applies(self) -> Any:
        """While the upstream is known down, a WebSocket upgrade fails fast like any request."""
        upstream = RecordingUpstream(health="down")
        _, url = self.start_upstream(upstream)
        proxy, p = self.start_proxy(upstream=url, health_interval=30)
        for _ in range(100):
            if p.health.down:
                break
            yield wait(0.01)
        response, content = yield self.fetch(
            b"GET",
            proxy + "/api/proxy/ws",
            headers=Headers({b"upgrade": [b"websocket"], b"connection": [b"upgrade"]}),
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["details"]["errorType"], "HEALTH_CHECK_FAILED")
        self.assertEqual(upstream.seen, [])

    @inlineCallbacks
    def test_hostile_handshake_answers_refused(self) -> Any:
        """An upstream whose answer to the handshake breaks HTTP/1.1 gets the client a 502, none of its bytes."""
        answers = [
            b"HTTP/1.1 101 Switching\rSet-Cookie: evil=1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Evil: a\x00b\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n Set-Cookie: evil=1\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nevil",
            b"RTSP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\nevil",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nevil",
            b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nevil",
            b"HTTP/1.1 101 Switching Protocols\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n",
        ]
        for answer in answers:
            port = listen_raw(self, answer)
            proxy, _ = self.start_proxy(upstream=f"http://127.0.0.1:{port}/api", health_path="")
            received = yield self.send(proxy)
            self.assertTrue(received.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), (answer, received))
            self.assertNotIn(b"evil", received.lower(), answer)
            body = json.loads(received.partition(b"\r\n\r\n")[2])
            self.assertEqual(body["details"]["errorType"], "UPSTREAM_ERROR", answer)

    @inlineCallbacks
    def test_plain_handshake_answer_relayed(self) -> Any:
        """A well-formed 101 from a raw upstream is relayed, and bytes then flow through the tunnel."""
        port = listen_raw(
            self,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe",
        )
        proxy, _ = self.start_proxy(upstream=f"http://127.0.0.1:{port}/api", health_path="")
        received = yield self.send(proxy)
        self.assertTrue(received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), received)
        self.assertTrue(received.endswith(b"\r\n\r\nframe"), received)


def listen_raw(case: TestCase, answer: bytes) -> int:
    """
    An upstream on loopback that answers anything with C{answer}, then closes.
    """

    class Answer(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(answer)
            self.transport.loseConnection()

    port = reactor.listenTCP(0, ServerFactory.forProtocol(Answer), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return int(port.getHost().port)
