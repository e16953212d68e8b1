"""
Request heads an attacker shapes, over real loopback sockets against a real
upstream: header names with underscores, a repeated or malformed C{Host},
dot segments with path parameters, control bytes in a target and the access
log, and malformed heads that must be answered at once, not after the header
timeout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy._tap import Options
from sora2proxy.http._site import QuietSite

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor

UNDERSCORED = b"X_Request_Id: evil-id\r\nX_Forwarded_Proto: https\r\nX_Forwarded_Host: evil.example\r\n"


class _Exchange(Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(b"".join(self.received))


@inlineCallbacks
def exchange(proxy: str, data: bytes) -> Any:
    """Send raw bytes to the proxy; the answer is everything it sent until it closed."""
    client = _Exchange(data)
    port = int(proxy.rsplit(":", 1)[1])
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    answer = yield client.closed
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def body_of(answer: bytes) -> Any:
    return json_of(answer.split(b"\r\n\r\n", 1)[1])


class OptionTests(SynchronousTestCase):
    def test_allow_underscore_headers_option(self) -> None:
        """Underscore headers are dropped unless --allow-underscore-headers is given."""
        for argv, allowed in (([], False), (["--allow-underscore-headers"], True)):
            options = Options(environ={})
            options.parseOptions(argv)
            assert options.config is not None
            self.assertIs(options.config.allow_underscore_headers, allowed)


class HeadersOverSockets(LoopbackMixin, TestCase):
    timeout = 10

    def proxy_for(self, upstream: RecordingUpstream, **options: Any) -> str:
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", **options)
        return proxy

    @inlineCallbacks
    def test_underscore_headers_dropped(self) -> Any:
        """X_Request_Id, X_Forwarded_Proto and X_Forwarded_Host never reach the backend by default."""
        upstream = RecordingUpstream()
        proxy = self.proxy_for(upstream)
        request = b"GET /api/proxy/a HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + UNDERSCORED + b"\r\n"
        answer = yield exchange(proxy, request)
        self.assertEqual(status_of(answer), 200, answer)
        seen = upstream.seen[0].headers
        names = [name.lower() for name, _ in seen.getAllRawHeaders()]
        self.assertEqual([name for name in names if b"_" in name], [])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(seen.getRawHeaders(b"x-forwarded-host"), [b"p"])

    @inlineCallbacks
    def test_underscore_headers_kept_when_allowed(self) -> Any:
        """With --allow-underscore-headers they are forwarded as sent."""
        upstream = RecordingUpstream()
        proxy = self.proxy_for(upstream, allow_underscore_headers=True)
        request = b"GET /api/proxy/a HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + UNDERSCORED + b"\r\n"
        answer = yield exchange(proxy, request)
        self.assertEqual(status_of(answer), 200, answer)
        seen = upstream.seen[0].headers
        self.assertEqual(seen.getRawHeaders(b"x_request_id"), [b"evil-id"])
        self.assertEqual(seen.getRawHeaders(b"x_forwarded_proto"), [b"https"])
        self.assertEqual(seen.getRawHeaders(b"x_forwarded_host"), [b"evil.example"])

    @inlineCallbacks
    def test_embedded_proxy_drops_them_too(self) -> Any:
        """A proxy mounted in an application's own Site drops them too, and keeps them when the config allows."""
        for allowed in (False, True):
            upstream = RecordingUpstream()
            _, url = self.start_upstream(upstream)
            config = ProxyConfig(upstream=url, health_path="", allow_underscore_headers=allowed)
            proxy = build_proxy(config, reactor)
            proxy.service.startService()
            self.addCleanup(proxy.service.stopService)
            port = reactor.listenTCP(0, QuietSite(proxy.resource), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            request = b"GET /api/proxy/a HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + UNDERSCORED + b"\r\n"
            answer = yield exchange(f"http://127.0.0.1:{port.getHost().port}", request)
            self.assertEqual(status_of(answer), 200, answer)
            seen = upstream.seen[0].headers
            self.assertEqual(seen.getRawHeaders(b"x_forwarded_host"), [b"evil.example"] if allowed else None)
            self.assertEqual(seen.getRawHeaders(b"x-forwarded-host"), [b"p"])

    @inlineCallbacks
    def test_bad_host_refused(self) -> Any:
        """Two Host headers, a Host that is not a host and port, or none on HTTP/1.1 get 400."""
        upstream = RecordingUpstream()
        proxy = self.proxy_for(upstream)
        for head in (
            b"Host: p\r\nHost: evil.example\r\n",
            b"Host: evil.example/x?\r\n",
            b"Host: user@evil.example\r\n",
            b"Host: [::1\r\n",
            b"Host: p:80x\r\n",
            b"",
        ):
            answer = yield exchange(proxy, b"GET /api/proxy/a HTTP/1.1\r\n" + head + b"\r\n")
            self.assertEqual(status_of(answer), 400, (head, answer))
            self.assertEqual(body_of(answer)["details"]["errorType"], "BAD_REQUEST")
        self.assertEqual(upstream.seen, [])

    @inlineCallbacks
    def test_good_hosts_served(self) -> Any:
        """A name, an address and an IPv6 literal with or without a port are served; so is HTTP/1.0 without Host."""
        upstream = RecordingUpstream()
        proxy = self.proxy_for(upstream)
        for line, head in (
            (b"HTTP/1.1", b"Host: api.example.com:8080\r\n"),
            (b"HTTP/1.1", b"Host: 127.0.0.1\r\n"),
            (b"HTTP/1.1", b"Host: [::1]:3000\r\n"),
            (b"HTTP/1.0", b""),
        ):
            request = b"GET /api/proxy/a " + line + b"\r\nConnection: close\r\n" + head + b"\r\n"
            answer = yield exchange(proxy, request)
            self.assertEqual(status_of(answer), 200, (head, answer))
        self.assertEqual(len(upstream.seen), 4)

    @inlineCallbacks
    def test_dot_segments_with_parameters_refused(self) -> Any:
        """..;/, .;/, %2e%2e;, ..%3b and their case variants get 400 and never reach the backend."""
        upstream = RecordingUpstream()
        proxy = self.proxy_for(upstream)
        for segment in (
            b"..;",
            b".;",
            b"%2e%2e;",
            b"..%3b",
            b"..%3B",
            b".%2e;",
            b"%2E.;x=1",
            b"..;jsessionid=a",
        ):
            target = b"/api/proxy/a/" + segment + b"/secret"
            answer = yield exchange(
                proxy, b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            )
            self.assertEqual(status_of(answer), 400, (target, answer))
        self.assertEqual(upstream.seen, [])
        answer = yield exchange(
            proxy, b"GET /api/proxy/a;v=1/b HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status_of(answer), 200, answer)
        self.assertEqual(upstream.seen[0].uri, b"/api/a;v=1/b")


class MalformedHeadsAnsweredAtOnce(LoopbackMixin, TestCase):
    """With a 60 s header timeout, a test that times out after 5 s fails if the proxy waits."""

    timeout = 5

    @inlineCallbacks
    def check_refused(self, request: bytes) -> Any:
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", header_timeout=60, idle_timeout=60)
        answer = yield exchange(proxy, request)
        self.assertEqual(status_of(answer), 400, answer)
        self.assertEqual(upstream.seen, [])

    def test_bare_lf_head(self) -> Any:
        """A request head whose lines end in a bare LF gets 400 at once."""
        return self.check_refused(b"GET /api/proxy/a HTTP/1.1\nHost: p\n\n")

    def test_bare_cr_in_head(self) -> Any:
        """A bare CR inside a request head gets 400 at once."""
        return self.check_refused(b"GET /api/proxy/a HTTP/1.1\r\nHost: p\r\nX-A: 1\rX-B: 2\r\n\r\n")

    def test_chunk_size_over_64_bits(self) -> Any:
        """A request chunk size of 17 hex digits gets 400 at once."""
        return self.check_refused(
            b"POST /api/proxy/up HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10000000000000000\r\nabc"
        )


class AccessLogOverSockets(LoopbackMixin, TestCase):
    timeout = 10

    @inlineCallbacks
    def check_escaped(self, log_format: str) -> Any:
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        proxy, _ = self.start_proxy(upstream=url, health_path="", access_log=str(path), log_format=log_format)
        # Twisted refuses U+0085 sent as UTF-8 (0xC2 0x85) before the proxy's
        # resource sees the request (the channel logs it, read as latin-1);
        # a raw 0x85 byte reaches the resource.
        for target, status in (
            (b"/api/proxy/a\xc2\x85b", 400),
            (b"/api/proxy/c\x85d\x7fe\x9bf\\g", 400),
            (b"/api/proxy/ok", 200),
        ):
            request = b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            answer = yield exchange(proxy, request)
            self.assertEqual(status_of(answer), status, answer)
        yield eventually(lambda: path.exists() and "/api/proxy/ok" in path.read_text(encoding="utf-8"))
        return path.read_text(encoding="utf-8").splitlines()

    @inlineCallbacks
    def test_text_line_escaped(self) -> Any:
        """A target holding U+0085 (a raw 0x85 byte) is escaped in the text access log and splits no line."""
        lines = yield self.check_escaped("text")
        self.assertEqual(len(lines), 3, lines)
        self.assertIn(" GET /api/proxy/a\\xc2\\x85b 400 ", lines[0])  # the bytes sent
        self.assertIn(" GET /api/proxy/c\\x85d\\x7fe\\x9bf\\x5cg 400 ", lines[1])
        self.assertIn(" GET /api/proxy/ok 200 ", lines[2])

    @inlineCallbacks
    def test_json_line_escaped(self) -> Any:
        """The same target is escaped the same way in the JSON access log."""
        lines = yield self.check_escaped("json")
        self.assertEqual(len(lines), 3, lines)
        events = [json.loads(line) for line in lines]
        self.assertEqual(
            [e["path"] for e in events],
            ["/api/proxy/a\\xc2\\x85b", "/api/proxy/c\\x85d\\x7fe\\x9bf\\x5cg", "/api/proxy/ok"],
        )
        self.assertTrue(events[1]["message"].startswith("GET /api/proxy/c\\x85d\\x7fe\\x9bf\\x5cg 400 "))
