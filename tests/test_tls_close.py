"""
A TLS connection the proxy closes (a refused head, an answer with
C{Connection: close}) is closed even when the client never answers the
proxy's close_notify: TLS waits for that answer, so the connection is
aborted after the channel's C{abortTimeout}, as twisted.web's own idle
timeout does.  A plain TCP connection closes at once and arms nothing.
Over real loopback sockets, with a blocking TLS client that sends and then
only waits.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import trustme
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.http._channel import ProxyChannel
from sora2proxy.http._site import ProxySite

from .helpers import LoopbackMixin, RecordingUpstream, reactor


def send_then_wait(port: int, ca: trustme.CA, data: bytes, limit: float) -> tuple[bytes, float]:
    """
    Send C{data} over TLS, then only read, until the proxy's side of the TCP
    connection ends (a FIN or a reset): the TLS state is driven by hand
    (C{ssl.MemoryBIO}), so the proxy's close_notify is read and never
    answered.  What came back, and how long the connection stayed after the
    request.
    """
    context = ssl.create_default_context()
    ca.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(data)
        sock.sendall(outgoing.read())
        started, received = time.monotonic(), b""
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            incoming.write(piece)
            try:
                while decrypted := tls.read(65536):
                    received += decrypted
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass  # the close_notify is read here, and never answered (nothing is sent any more)
        return received, time.monotonic() - started


class TLSCloseTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def serve(self, **options: Any) -> Any:
        self.ca = trustme.CA()
        key_file = self.mktemp()
        self.ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(key_file)
        _, url = self.start_upstream(RecordingUpstream())
        config = ProxyConfig(upstream=url, health_path="", **options)
        proxy = build_proxy(config, reactor)
        endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_file}")
        port = yield endpoint.listen(ProxySite(proxy.resource, config))
        self.addCleanup(port.stopListening)
        self.addCleanup(proxy.service.stopService)
        self.patch(ProxyChannel, "abortTimeout", 1)
        return port.getHost().port

    @inlineCallbacks
    def test_refused_head_closed(self) -> Any:
        """A slow head over TLS gets its 408, and the connection is closed though the client never answers."""
        port = yield self.serve(header_timeout=0.5)
        received, took = yield deferToThread(
            send_then_wait, port, self.ca, b"GET /api/proxy/a HTTP/1.1\r\nHost: x\r\n", 30
        )
        self.assertIn(b" 408 ", received.split(b"\r\n", 1)[0])
        self.assertLess(took, 10, "the connection stayed open")

    @inlineCallbacks
    def test_connection_close_answer_closed(self) -> Any:
        """An answer with Connection: close over TLS is followed by the close, though the client never answers."""
        port = yield self.serve()
        request = b"GET /api/proxy/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        received, took = yield deferToThread(send_then_wait, port, self.ca, request, 30)
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:40])
        self.assertLess(took, 10, "the connection stayed open")
