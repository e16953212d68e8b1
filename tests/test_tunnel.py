"""
WebSocket tunnels are bounded: each open tunnel holds one of the
C{--max-inflight} slots until it closes, and a tunnel with no bytes either
way for C{--tunnel-idle-timeout} is closed.  The idle rule on a Clock; both
rules over loopback against a real WebSocket upstream (the C{websockets}
package).
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from sora2proxy.forward._websocket import ABORT_AFTER, Tunnel
from sora2proxy.resilience._retry import RetryPolicy

from .helpers import LoopbackMixin, eventually, reactor
from .test_fidelity import Raw

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

HANDSHAKE = (
    b"GET /api/proxy/ws HTTP/1.1\r\nHost: p\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Channel:
    """The parts of an HTTPChannel that a tunnel's take-over touches."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.transport.registerProducer(self, True)
        self._dataBuffer: list[bytes] = []

    def clearLineBuffer(self) -> bytes:
        return b""

    def setTimeout(self, seconds: float | None) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class _Upstream:
    """An endpoint that connects at once to an in-memory transport."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: Any) -> Any:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class OptionTests(SynchronousTestCase):
    def test_tunnel_idle_timeout_option(self) -> None:
        """--tunnel-idle-timeout is 300 s by default, takes 0 (no limit), and a negative value stops start-up."""
        from .test_config import parse

        self.assertEqual(parse().config.tunnel_idle_timeout, 300.0)  # type: ignore[union-attr]
        self.assertEqual(parse("--tunnel-idle-timeout", "0").config.tunnel_idle_timeout, 0.0)  # type: ignore[union-attr]
        with self.assertRaises(SystemExit) as caught:
            parse("--tunnel-idle-timeout", "-1")
        self.assertIn("--tunnel-idle-timeout", str(caught.exception.code))


class IdleTimeoutTests(SynchronousTestCase):
    def open(self, idle_timeout: float = 300.0) -> tuple[Clock, StringTransport, _Upstream, list[Any]]:
        clock = Clock()
        upstream = _Upstream()
        closed: list[tuple[int, int]] = []
        channel = _Channel()
        client = channel.transport
        tunnel = Tunnel(
            clock,
            RetryPolicy(attempts=1, backoff=0.0),
            upstream,
            HANDSHAKE,
            "rid",
            30.0,
            idle_timeout,
            lambda kind, reason, tries: b"error",
            lambda status, tries: closed.append((status, tries)),
        )
        tunnel.start(SimpleNamespace(channel=channel))  # type: ignore[arg-type]
        self.assertEqual(upstream.transport.value(), HANDSHAKE)
        upstream.protocol.dataReceived(SWITCHING)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101"))
        return clock, client, upstream, closed

    def test_bytes_either_way_keep_it_open(self) -> None:
        """Bytes from the client or from the upstream restart the idle wait; then 300 s of silence closes both sides."""
        clock, client, upstream, _ = self.open()
        clock.advance(299)
        client.protocol.dataReceived(b"from client")
        self.assertEqual(upstream.transport.value().rpartition(b"\r\n\r\n")[2], b"from client")
        clock.advance(299)
        upstream.protocol.dataReceived(b"from upstream")
        self.assertTrue(client.value().endswith(b"from upstream"))
        clock.advance(299)
        self.assertFalse(client.disconnecting or upstream.transport.disconnecting)
        clock.advance(1)
        self.assertTrue(client.disconnecting)
        self.assertTrue(upstream.transport.disconnecting)

    def test_silence_from_the_start(self) -> None:
        """A tunnel that never carries a byte after its 101 is closed after the idle timeout, not before."""
        clock, client, upstream, _ = self.open(idle_timeout=5)
        clock.advance(4.9)
        self.assertFalse(client.disconnecting)
        clock.advance(0.1)
        self.assertTrue(client.disconnecting and upstream.transport.disconnecting)

    def test_stuck_connection_aborted(self) -> None:
        """Connections that do not close cleanly after an idle timeout are aborted ABORT_AFTER seconds later."""
        clock, client, upstream, _ = self.open(idle_timeout=5)
        clock.advance(5)
        self.assertFalse(client.disconnected)
        clock.advance(ABORT_AFTER)
        self.assertTrue(client.disconnected and upstream.transport.disconnected)

    def test_closing_reports_and_leaves_no_timer(self) -> None:
        """When the client's connection closes the tunnel reports 101 with its tries once, and no timer is left."""
        clock, client, _, closed = self.open(idle_timeout=5)
        clock.advance(5)
        client.protocol.connectionLost(None)
        self.assertEqual(closed, [(101, 1)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_zero_is_no_limit(self) -> None:
        """--tunnel-idle-timeout 0 keeps a silent tunnel open."""
        clock, client, _, _ = self.open(idle_timeout=0)
        clock.advance(10 * 86400)
        self.assertFalse(client.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])


class EarlyBytesTests(SynchronousTestCase):
    def test_early_bytes_bounded(self) -> None:
        """A client that streams before the upstream answers is read no more past 64 KiB, then all of it is sent on the 101."""
        clock = Clock()
        upstream = _Upstream()
        channel = _Channel()
        client = channel.transport
        Tunnel(
            clock,
            RetryPolicy(attempts=1, backoff=0.0),
            upstream,
            HANDSHAKE,
            "rid",
            30.0,
            300.0,
            lambda kind, reason, tries: b"error",
            lambda status, tries: None,
        ).start(SimpleNamespace(channel=channel))  # type: ignore[arg-type]
        client.protocol.dataReceived(b"a" * 60_000)
        self.assertEqual(client.producerState, "producing")
        client.protocol.dataReceived(b"b" * 10_000)
        self.assertEqual(client.producerState, "paused")
        upstream.protocol.dataReceived(SWITCHING)
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(upstream.transport.value(), HANDSHAKE + b"a" * 60_000 + b"b" * 10_000)


@implementer(IStreamClientEndpoint)
class _Refused:
    """An endpoint whose every connection is refused."""

    def __init__(self) -> None:
        self.tries = 0

    def connect(self, factory: Any) -> Any:
        self.tries += 1
        return fail(ConnectionRefusedError())


class ClientLeavesTests(SynchronousTestCase):
    def test_client_leaves_during_backoff(self) -> None:
        """A client that leaves while a refused handshake waits to be retried frees its slot (499) and stops the retries."""
        clock = Clock()
        endpoint = _Refused()
        closed: list[tuple[int, int]] = []
        errors: list[str] = []
        channel = _Channel()
        client = channel.transport
        Tunnel(
            clock,
            RetryPolicy(attempts=3, backoff=1.0),
            endpoint,
            HANDSHAKE,
            "rid",
            30.0,
            300.0,
            lambda kind, reason, tries: errors.append(kind.error_type) or b"error",
            lambda status, tries: closed.append((status, tries)),
        ).start(SimpleNamespace(channel=channel))  # type: ignore[arg-type]
        self.assertEqual(endpoint.tries, 1)
        client.protocol.connectionLost(None)
        self.assertEqual(closed, [(499, 1)])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertEqual((endpoint.tries, errors), (1, []))


class EchoUpstream:
    """A real WebSocket echo server (the C{websockets} package) in a thread, counting open connections."""

    def __init__(self, test: TestCase) -> None:
        from websockets.sync.server import serve

        self.open = 0
        lock = threading.Lock()

        def echo(connection: Any) -> None:
            with lock:
                self.open += 1
            try:
                for message in connection:
                    connection.send(message)
            finally:
                with lock:
                    self.open -= 1

        server = serve(echo, "127.0.0.1", 0, ping_interval=None)  # silent unless spoken to
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        test.addCleanup(lambda: (server.shutdown(), thread.join(5)))
        self.url = f"http://127.0.0.1:{server.socket.getsockname()[1]}/api"


class TunnelLimitTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def connect(self, proxy: str) -> Any:
        client = Raw()
        port = int(proxy.rsplit(":", 1)[1])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        client.transport.write(HANDSHAKE)
        self.addCleanup(client.transport.loseConnection)
        return client

    @inlineCallbacks
    def open_tunnel(self, proxy: str) -> Any:
        client = yield self.connect(proxy)
        head = yield client.wait_for(b"\r\n\r\n").addTimeout(10, reactor)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        return client

    @inlineCallbacks
    def test_tunnels_hold_inflight_slots(self) -> Any:
        """With --max-inflight 2, two open tunnels make the next upgrade 503 OVERLOADED; once one closes, a new one opens and echoes."""
        upstream = EchoUpstream(self)
        proxy, p = self.start_proxy(upstream=upstream.url, health_path="", max_inflight=2)
        first = yield self.open_tunnel(proxy)
        second = yield self.open_tunnel(proxy)
        refused = yield self.connect(proxy)
        answer = yield refused.wait_for(b"}}").addTimeout(10, reactor)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        self.assertEqual(json.loads(body)["details"]["errorType"], "OVERLOADED")
        first.transport.loseConnection()
        yield first.closed
        yield eventually(lambda: p.telemetry.in_flight == 1, what="the closed tunnel's slot freed")
        third = yield self.open_tunnel(proxy)
        third.transport.write(b"\x81\x82" + b"\x00\x00\x00\x00" + b"hi")  # a masked text frame, mask 0
        echoed = yield third.wait_for(b"\x81\x02hi")
        self.assertTrue(echoed.endswith(b"\x81\x02hi"))
        for client in (second, third, refused):
            client.transport.loseConnection()
        yield eventually(lambda: p.telemetry.in_flight == 0 and upstream.open == 0, what="tunnels closed")

    @inlineCallbacks
    def test_idle_tunnel_closed(self) -> Any:
        """A tunnel with no bytes either way for --tunnel-idle-timeout is closed, upstream too, and frees its slot."""
        upstream = EchoUpstream(self)
        proxy, p = self.start_proxy(upstream=upstream.url, health_path="", tunnel_idle_timeout=0.5)
        client = yield self.open_tunnel(proxy)
        opened = reactor.seconds()
        yield eventually(lambda: upstream.open == 1, what="the upstream's connection")
        yield client.closed.addTimeout(10, reactor)
        self.assertGreaterEqual(reactor.seconds() - opened, 0.5)
        yield eventually(lambda: p.telemetry.in_flight == 0 and upstream.open == 0, what="both sides closed")
