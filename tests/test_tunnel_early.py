"""
WebSocket frames a client sends in the same packet as its handshake request
reach the upstream after its 101, over real loopback sockets: against a real
WebSocket echo server (the C{websockets} package), and against a raw
upstream that records exactly the bytes it received after the handshake.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from .helpers import LoopbackMixin, eventually, reactor
from .test_fidelity import Raw
from .test_tunnel import HANDSHAKE, SWITCHING, EchoUpstream

#: Masked text frames (mask 0): "hi" and "yo".
HI = b"\x81\x82\x00\x00\x00\x00hi"
YO = b"\x81\x82\x00\x00\x00\x00yo"


class _RecordingTunnelEnd(Protocol):
    """Answers a handshake with 101, then records every byte that follows."""

    def __init__(self, owner: RawTunnelUpstream) -> None:
        self.owner = owner
        self.head = b""
        self.switched = False

    def dataReceived(self, data: bytes) -> None:
        if not self.switched:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.switched = True
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            assert self.transport is not None
            self.transport.write(SWITCHING)
        self.owner.after_head += data


class RawTunnelUpstream(Factory):
    """A raw upstream for one tunnel: C{after_head} is what came after the handshake."""

    def __init__(self) -> None:
        self.after_head = b""

    def buildProtocol(self, addr: Any) -> Protocol:
        return _RecordingTunnelEnd(self)


class EarlyFramesTests(LoopbackMixin, TestCase):
    timeout = 15

    @inlineCallbacks
    def connect(self, proxy: str, first: bytes) -> Any:
        client = Raw()
        port = int(proxy.rsplit(":", 1)[1])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(first)  # one write: one packet on loopback
        return client

    @inlineCallbacks
    def test_frame_with_handshake_echoed(self) -> Any:
        """A frame sent in the handshake's packet is echoed by a real WebSocket upstream, and so is a later one."""
        upstream = EchoUpstream(self)
        proxy, _ = self.start_proxy(upstream=upstream.url, health_path="")
        client = yield self.connect(proxy, HANDSHAKE + HI)
        answer = yield client.wait_for(b"\x81\x02hi").addTimeout(10, reactor)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)
        client.transport.write(YO)
        answer = yield client.wait_for(b"\x81\x02yo").addTimeout(10, reactor)
        self.assertTrue(answer.endswith(b"\x81\x02hi\x81\x02yo"), answer)

    @inlineCallbacks
    def test_early_bytes_reach_upstream_exactly(self) -> Any:
        """Bytes after the handshake in its packet reach the upstream exactly once, in order, before later ones."""
        upstream = RawTunnelUpstream()
        port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/api"
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        client = yield self.connect(proxy, HANDSHAKE + HI + YO)
        yield client.wait_for(b"\r\n\r\n").addTimeout(10, reactor)
        yield eventually(lambda: len(upstream.after_head) >= 2 * len(HI), what="the early frames upstream")
        client.transport.write(b"later")
        yield eventually(lambda: upstream.after_head.endswith(b"later"), what="the later bytes upstream")
        self.assertEqual(upstream.after_head, HI + YO + b"later")
        done: Deferred[bytes] = client.closed
        client.transport.loseConnection()
        yield done
