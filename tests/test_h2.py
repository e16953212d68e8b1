"""
HTTP/2 on a TLS listener (ALPN), over real loopback sockets with a trustme
certificate: curl and h2load as clients, and a hyper-h2 client whose reading
pace the test controls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
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

from .h2_client import H2Client, connect_h2
from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor

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
    def start_h2_proxy(self, upstream: Resource, **options: Any) -> Any:
        """Serve a proxy of C{upstream} on a TLS listener; its port and the proxy."""
        self.certificate()
        _, url = self.start_upstream(upstream)
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
