"""
send_now over a real loopback TCP connection: bytes leave at once when
nothing is queued, order is kept when something is, and anything that is
not a plain TCP transport gets a plain write.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from sora2proxy.http._eager import send_now

from .helpers import reactor, wait


class EagerTests(TestCase):
    @inlineCallbacks
    def connected(self) -> Any:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        protocol = Protocol()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.getsockname()[1]), protocol)
        peer, _ = server.accept()
        peer.setblocking(False)
        self.addCleanup(peer.close)
        assert protocol.transport is not None
        self.addCleanup(protocol.transport.abortConnection)  # type: ignore[attr-defined]
        return protocol.transport, peer

    @inlineCallbacks
    def test_sent_before_the_reactor_turns(self) -> Any:
        """Bytes written with nothing queued reach the peer before the reactor turns."""
        transport, peer = yield self.connected()
        send_now(transport, b"hello")
        self.assertEqual(peer.recv(100), b"hello")  # no reactor turn in between
        self.assertEqual(transport._tempDataBuffer, [])

    @inlineCallbacks
    def test_queued_bytes_keep_their_order(self) -> Any:
        """Bytes written after queued bytes wait for them: the peer gets both in order."""
        transport, peer = yield self.connected()
        transport.write(b"first ")
        send_now(transport, b"second")
        with self.assertRaises(BlockingIOError):
            peer.recv(100)  # both wait for the reactor, in order
        received = b""
        for _ in range(50):
            yield wait(0.001)
            try:
                received += peer.recv(100)
            except BlockingIOError:
                continue
            if len(received) == 12:
                break
        self.assertEqual(received, b"first second")

    @inlineCallbacks
    def test_what_the_socket_does_not_take_is_queued(self) -> Any:
        """What the socket buffer cannot take at once is queued and arrives whole."""
        transport, peer = yield self.connected()
        big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
        send_now(transport, big)
        self.assertTrue(transport._tempDataBuffer or len(transport.dataBuffer) > transport.offset)
        received = bytearray()
        for _ in range(5000):
            try:
                received += peer.recv(1 << 20)
            except BlockingIOError:
                yield wait(0.001)
            if len(received) == len(big):
                break
        self.assertEqual(bytes(received), big)

    def test_other_transports_get_a_plain_write(self) -> None:
        """A transport that is not a TCP socket gets a plain write."""
        transport = StringTransport()
        send_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")
