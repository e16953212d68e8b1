"""
HTTP/2 on a TLS listener (ALPN), over real loopback sockets with a trustme
certificate: curl and h2load as clients, and a hyper-h2 client whose reading
pace the test controls.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import trustme
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.internet import ssl
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.http._site import ProxySite

from .h2_client import HUGE_WINDOW, H2Client, connect_h2
from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor, refused_port
from .test_fidelity import Raw
from .test_tunnel import HANDSHAKE, EchoUpstream

MiB = 1024 * 1024


@implementer(IPushProducer)
class Zeros:
    """Writes C{size} bytes to a request as fast as it takes them; counts what it wrote."""

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.left = size
        self.written = 0
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            n = min(64 * 1024, self.left)
            self.left -= n
            self.written += n
            self.request.write(b"\0" * n)
        if self.left == 0 and not self.paused:
            self.left = -1
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.left = -1


class StreamingUpstream(Resource):
    """
    C{/api/big/N}: N MiB of zeros with backpressure; C{/api/events/N}: N
    server-sent events, one every 20 ms; C{/api/cut}: half a body, then the
    connection dies; anything else: the recording echo.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.echo = RecordingUpstream()
        self.producers: list[Zeros] = []

    def render(self, request: Request) -> Any:
        parts = request.path.split(b"/")
        if parts[2:3] == [b"big"]:
            size = int(parts[3]) * MiB
            request.setHeader(b"content-length", b"%d" % size)
            zeros = Zeros(request, size)
            self.producers.append(zeros)
            request.registerProducer(zeros, True)
            zeros.resumeProducing()
            return NOT_DONE_YET
        if parts[2:3] == [b"events"]:
            request.setHeader(b"content-type", b"text/event-stream")
            self._event(request, 0, int(parts[3]))
            return NOT_DONE_YET
        if parts[2:3] == [b"cut"]:
            request.setHeader(b"content-length", b"1000")
            request.write(b"x" * 500)
            reactor.callLater(0.05, request.transport.abortConnection)
            return NOT_DONE_YET
        return self.echo.render(request)

    def _event(self, request: Request, n: int, count: int) -> None:
        if request._disconnected:  # type: ignore[attr-defined]
            return
        if n == count:
            request.finish()
            return
        request.write(b"data: %d\n\n" % n)
        reactor.callLater(0.02, self._event, request, n + 1, count)


class H2Mixin(LoopbackMixin):
    """A proxy on a TLS listener with a trustme certificate."""

    def certificate(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        folder = Path(self.mktemp())  # type: ignore[attr-defined]
        folder.mkdir()
        self.ca_pem = ca.cert_pem.bytes()
        self.ca_file, self.key_file, self.cert_file = (
            str(folder / n) for n in ("ca.pem", "key.pem", "cert.pem")
        )
        ca.cert_pem.write_to_path(self.ca_file)
        cert.private_key_pem.write_to_path(self.key_file)
        cert.cert_chain_pems[0].write_to_path(self.cert_file)

    def tls_listen(self) -> str:
        """The --listen value of a TLS listener on a free loopback port."""
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key_file}:certKey={self.cert_file}"

    @inlineCallbacks
    def start_h2_proxy(self, upstream: Resource | str, **options: Any) -> Any:
        """Serve a proxy of C{upstream} (or of that URL) on a TLS listener; its port and the proxy."""
        self.certificate()
        url = upstream if isinstance(upstream, str) else self.start_upstream(upstream)[1]
        config = ProxyConfig(upstream=url, health_path="", **options)
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)  # type: ignore[attr-defined]
        site = ProxySite(proxy.resource, config, refusals=proxy.refusals)
        port = yield serverFromString(reactor, self.tls_listen()).listen(site)
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port.getHost().port, proxy

    @inlineCallbacks
    def h2(self, port: int, client: H2Client | None = None) -> Any:
        connected = yield connect_h2(port, self.ca_pem, client)
        self.addCleanup(lambda: connected.transport.abortConnection())  # type: ignore[attr-defined]
        return connected

    def curl(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue("curl", ["-sS", "--cacert", self.ca_file, *args], reactor=reactor)


class CurlTests(H2Mixin, TestCase):
    """curl through the proxy's TLS listener, by ALPN."""

    @inlineCallbacks
    def test_curl_http2_gets_http2_200(self) -> Any:
        """curl --http2 gets HTTP/2 200 through the proxy, and the access log says HTTP/2.0."""
        upstream = StreamingUpstream()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        port, _ = yield self.start_h2_proxy(upstream)
        out, err, code = yield self.curl("--http2", "-i", f"https://localhost:{port}/api/proxy/hello?x=1")
        self.assertEqual(code, 0, err)
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/2 200"), head)
        self.assertEqual(json_of(body)["uri"], "/api/hello?x=1")
        seen = upstream.echo.seen[0]
        self.assertEqual(seen.headers.getRawHeaders(b"x-forwarded-host"), [f"localhost:{port}".encode()])
        self.assertEqual(seen.headers.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(seen.headers.getRawHeaders(b"via"), [b"2 sora2proxy"])  # received over HTTP/2
        self.assertIn(b"\r\nvia: 1.1 sora2proxy", head)  # the answer came from HTTP/1.1
        lines = yield eventually(lambda: [e for e in observer if "access" in e])
        self.assertEqual(lines[0]["protocol"], "HTTP/2.0")
        self.assertTrue(lines[0]["access"].endswith(" proto=HTTP/2.0"), lines[0]["access"])

    @inlineCallbacks
    def test_http11_stays_on_the_same_listener(self) -> Any:
        """A client that offers only http/1.1 on the same TLS listener gets HTTP/1.1 200."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream())
        out, err, code = yield self.curl("--http1.1", "-i", f"https://localhost:{port}/api/proxy/hello")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:100])

    @inlineCallbacks
    def test_h2load_100_concurrent_streams(self) -> Any:
        """h2load: 300 requests, 100 concurrent streams on one connection, all succeed."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream())
        args = ["-n", "300", "-c", "1", "-m", "100", f"https://localhost:{port}/api/proxy/x"]
        out, err, code = yield getProcessOutputAndValue("h2load", args, reactor=reactor)
        self.assertEqual(code, 0, err)
        self.assertIn(b"300 succeeded, 0 failed, 0 errored", out)
        self.assertIn(b"status codes: 300 2xx", out)
        self.assertIn(b"Application protocol: h2", out)


class StreamTests(H2Mixin, TestCase):
    """Many streams on one HTTP/2 connection, each forwarded to an HTTP/1.1 upstream."""

    @inlineCallbacks
    def test_100_concurrent_streams(self) -> Any:
        """100 requests at once on one connection each get their own 200; the proxy allows 100 streams."""
        upstream = StreamingUpstream()
        port, _ = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port)
        self.assertEqual(client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS], 100)
        answers = [client.request(b"GET", b"/api/proxy/n/%d" % i) for i in range(100)]
        yield gatherResults([a.done for a in answers])
        for i, answer in enumerate(answers):
            self.assertEqual((answer.status, json_of(answer.content)["uri"]), (200, f"/api/n/{i}"))
        self.assertEqual(len(upstream.echo.seen), 100)

    @inlineCallbacks
    def test_max_streams_option(self) -> Any:
        """--h2-max-streams 7 is what the proxy's SETTINGS frame announces."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream(), h2_max_streams=7)
        client = yield self.h2(port)
        self.assertEqual(client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS], 7)

    @inlineCallbacks
    def test_more_streams_than_allowed_close_the_connection(self) -> Any:
        """A client that opens a third stream where 2 are allowed gets GOAWAY; its connection closes."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream(), h2_max_streams=2)
        client = yield self.h2(port)
        client.conn.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = deque([10])  # it lies
        for _ in range(3):
            client.request(b"GET", b"/api/proxy/events/50")
        yield client.closed.addTimeout(10, reactor)  # not left to the idle timeout (60 s)
        self.assertIsNotNone(client.terminated)
        self.assertEqual(client.terminated.error_code, ErrorCodes.PROTOCOL_ERROR)

    @inlineCallbacks
    def test_sse_beside_a_256_mib_download(self) -> Any:
        """An SSE stream's events all arrive, in order, while a 256 MiB download shares the connection."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream())
        client = yield self.h2(port, H2Client(window=HUGE_WINDOW, keep=False))
        big = client.request(b"GET", b"/api/proxy/big/256")
        yield eventually(lambda: big.received > 4 * MiB, 30, "the download under way")
        client.keep = True
        events = client.request(b"GET", b"/api/proxy/events/20")
        yield events.done
        client.keep = False
        self.assertEqual(events.headers[b"content-type"], b"text/event-stream")
        self.assertEqual(events.content, b"".join(b"data: %d\n\n" % n for n in range(20)))
        self.assertFalse(big.ended, "the SSE stream ended after the download (not beside it)")
        yield big.done
        self.assertEqual((big.status, big.received, big.reset), (200, 256 * MiB, None))

    @inlineCallbacks
    def test_a_slow_stream_pauses_its_upstream_only(self) -> Any:
        """A stream whose reader grants no window pauses its upstream; other streams carry on."""
        upstream = StreamingUpstream()
        port, _ = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port, H2Client(keep=False))
        slow = client.request(b"GET", b"/api/proxy/big/64")
        client.slow.add(slow.stream_id)
        yield eventually(
            lambda: upstream.producers and upstream.producers[0].paused, 10, "the upstream paused"
        )
        for _ in range(3):
            quick = client.request(b"GET", b"/api/proxy/quick")
            yield quick.done
            self.assertEqual(quick.status, 200)
        zeros = upstream.producers[0]
        self.assertTrue(zeros.paused)
        self.assertLess(zeros.written, 8 * MiB)  # of 64: the rest waits upstream
        self.assertEqual(slow.received, 65535)  # the stream's window, no more

    @inlineCallbacks
    def test_client_resetting_a_stream_stops_its_upstream(self) -> Any:
        """A client that resets a download's stream stops the upstream read; the connection carries on."""
        upstream = StreamingUpstream()
        port, proxy = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port, H2Client(keep=False))
        big = client.request(b"GET", b"/api/proxy/big/64")
        client.slow.add(big.stream_id)
        yield eventually(lambda: big.received, 10, "the download under way")
        client.conn.reset_stream(big.stream_id)
        client.transport.write(client.conn.data_to_send())
        yield eventually(lambda: upstream.producers[0].left == -1, 10, "the upstream stopped")
        self.assertLess(upstream.producers[0].written, 64 * MiB)
        yield eventually(lambda: proxy.telemetry.in_flight == 0, 10, "the request ended")
        after = client.request(b"GET", b"/api/proxy/after")
        yield after.done
        self.assertEqual(after.status, 200)

    @inlineCallbacks
    def test_a_5_mib_upload(self) -> Any:
        """A 5 MiB request body sent over h2 reaches the upstream byte for byte."""
        upstream = StreamingUpstream()
        port, proxy = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port, H2Client(window=HUGE_WINDOW))
        body = bytes(range(256)) * (5 * 4096)
        answer = client.request(b"POST", b"/api/proxy/upload", (), body)
        yield answer.done
        self.assertEqual(answer.status, 200)
        self.assertEqual(upstream.echo.seen[0].body, body)
        count = proxy.telemetry.registry.get_sample_value
        self.assertEqual(count("sora2proxy_requests_total", {"method": "POST", "status": "200"}), 1)

    @inlineCallbacks
    def test_upstream_dying_mid_body_resets_the_stream(self) -> Any:
        """An answer cut short upstream is a reset stream (never a complete-looking one); the connection lives."""
        port, _ = yield self.start_h2_proxy(StreamingUpstream())
        client = yield self.h2(port)
        cut = client.request(b"GET", b"/api/proxy/cut")
        yield cut.done
        self.assertEqual(cut.status, 200)
        self.assertIsNotNone(cut.reset)
        self.assertLess(cut.received, 1000)
        after = client.request(b"GET", b"/api/proxy/after")
        yield after.done
        self.assertEqual(after.status, 200)


class ProxyAnswerTests(H2Mixin, TestCase):
    """The proxy's own answers, limits and idempotency over HTTP/2."""

    @inlineCallbacks
    def test_upstream_down_is_503_json(self) -> Any:
        """An upstream that refuses connections: 503 ECONNREFUSED JSON on the stream, as over HTTP/1.1."""
        port, _ = yield self.start_h2_proxy(f"http://127.0.0.1:{refused_port()}/api", attempts=1)
        client = yield self.h2(port)
        answer = client.request(b"GET", b"/api/proxy/x")
        yield answer.done
        self.assertEqual(answer.status, 503)
        self.assertEqual(json_of(answer.content)["details"]["errorType"], "ECONNREFUSED")

    @inlineCallbacks
    def test_idempotency_key_replayed(self) -> Any:
        """A POST with an Idempotency-Key sent twice over h2 reaches the upstream once; the second is a replay."""
        upstream = StreamingUpstream()
        port, _ = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port)
        key = (b"idempotency-key", b"k-1")
        first = client.request(b"POST", b"/api/proxy/videos", (key,), b'{"prompt":"a"}')
        yield first.done
        second = client.request(b"POST", b"/api/proxy/videos", (key,), b'{"prompt":"a"}')
        yield second.done
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(second.headers.get(b"idempotent-replayed"), b"true")
        self.assertEqual(second.content, first.content)
        self.assertEqual(len(upstream.echo.seen), 1)
        self.assertEqual(upstream.echo.seen[0].body, b'{"prompt":"a"}')

    @inlineCallbacks
    def test_connection_specific_fields_refused(self) -> Any:
        """Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, TE: gzip get a 400 each, logged and counted."""
        upstream = StreamingUpstream()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        port, proxy = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port)
        for field in (
            (b"connection", b"close"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"websocket"),
            (b"te", b"gzip"),
        ):
            answer = client.request(b"GET", b"/api/proxy/x", (field,))
            yield answer.done
            self.assertEqual(answer.status, 400, field)
            error = json_of(answer.content)
            self.assertEqual(error["details"]["errorType"], "BAD_REQUEST")
            self.assertIn("WebSocket" if field[0] == b"upgrade" else "RFC 9113", error["message"])
        self.assertEqual(upstream.echo.seen, [])
        fine = client.request(b"GET", b"/api/proxy/x", ((b"te", b"trailers"),))
        yield fine.done
        self.assertEqual(fine.status, 200)
        self.assertIsNone(client.terminated)
        count = proxy.telemetry.registry.get_sample_value
        self.assertEqual(count("sora2proxy_errors_total", {"error_type": "BAD_REQUEST"}), 6)
        lines = [e["access"] for e in observer if "access" in e]
        self.assertEqual(len(lines), 7)
        self.assertTrue(all(line.endswith(" proto=HTTP/2.0") for line in lines), lines)
        self.assertTrue(lines[0].startswith("GET /api/proxy/x 400 tries=0 "), lines[0])

    @inlineCallbacks
    def test_head_limits(self) -> Any:
        """Over 100 fields is a 431; a field with _ in its name is dropped, as over HTTP/1.1; cookies go on in one field."""
        upstream = StreamingUpstream()
        port, _ = yield self.start_h2_proxy(upstream)
        client = yield self.h2(port)
        many = tuple((b"x-n%d" % i, b"v") for i in range(110))
        answer = client.request(b"GET", b"/api/proxy/x", many)
        yield answer.done
        self.assertEqual(answer.status, 431)
        fields = ((b"x_user", b"admin"), (b"x-ok", b"1"), (b"cookie", b"a=1"), (b"cookie", b"b=2"))
        plain = client.request(b"GET", b"/api/proxy/x", fields)
        yield plain.done
        self.assertEqual(plain.status, 200)
        seen = upstream.echo.seen[0].headers
        self.assertEqual((seen.getRawHeaders(b"x_user"), seen.getRawHeaders(b"x-ok")), (None, [b"1"]))
        self.assertEqual(
            seen.getRawHeaders(b"cookie"), [b"a=1; b=2"]
        )  # one field in HTTP/1.1 (RFC 9113 8.2.3)

    @inlineCallbacks
    def test_body_over_max_body(self) -> Any:
        """A body over --max-body is a 413 on its stream, with or without Content-Length; the connection lives."""
        upstream = StreamingUpstream()
        port, _ = yield self.start_h2_proxy(upstream, max_body=10)
        client = yield self.h2(port)
        told = client.request(b"POST", b"/api/proxy/x", ((b"content-length", b"11"),), b"x" * 11)
        yield told.done
        untold = client.request(b"POST", b"/api/proxy/x", (), b"x" * 11)
        yield untold.done
        for answer in (told, untold):
            self.assertEqual(answer.status, 413)
            self.assertEqual(json_of(answer.content)["details"]["errorType"], "BODY_TOO_LARGE")
        small = client.request(b"POST", b"/api/proxy/x", (), b"x" * 10)
        yield small.done
        self.assertEqual(small.status, 200)
        self.assertEqual([seen.body for seen in upstream.echo.seen], [b"x" * 10])


class WebSocketTests(H2Mixin, TestCase):
    """WebSocket on the TLS listener stays HTTP/1.1."""

    @inlineCallbacks
    def test_websocket_over_tls_http11(self) -> Any:
        """A client that negotiates http/1.1 on the TLS listener opens a WebSocket tunnel that echoes."""
        upstream = EchoUpstream(self)
        port, proxy = yield self.start_h2_proxy(upstream.url)
        authority = ssl.Certificate.loadPEM(self.ca_pem)
        options = ssl.optionsForClientTLS("localhost", trustRoot=authority, acceptableProtocols=[b"http/1.1"])
        client = Raw()
        yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port, options), client)
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(HANDSHAKE)
        head = yield client.wait_for(b"\r\n\r\n").addTimeout(10, reactor)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        client.transport.write(b"\x81\x82" + b"\x00\x00\x00\x00" + b"hi")  # a masked text frame, mask 0
        echoed = yield client.wait_for(b"\x81\x02hi").addTimeout(10, reactor)
        self.assertTrue(echoed.endswith(b"\x81\x02hi"))
        client.transport.loseConnection()
        yield eventually(lambda: proxy.telemetry.in_flight == 0 and upstream.open == 0, what="tunnel closed")
