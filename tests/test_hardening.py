"""
The front door attacked: request targets that try to leave the upstream or its
base path, CR/LF, --max-inflight, request-head limits and slowloris, ambiguous
framing (request smuggling), pipelining, and a raw-socket fuzz.
"""

from __future__ import annotations

import json
import random
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.forward._paths import TargetRefused, check_target

from .test_cli import get, start_backend, start_proxy_process


def exchange(port: int, data: bytes, timeout: float = 5.0, wait_close: bool = True) -> bytes:
    """Send raw bytes to the proxy, read until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not wait_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


class TargetPolicyTests(SynchronousTestCase):
    def test_refused(self) -> None:
        """Targets that could leave the base path, or carry unsafe bytes, are refused."""
        for target in (
            b"/api/proxy/../secret", b"/api/proxy/./x", b"/api/proxy/%2e%2e/secret", b"/api/proxy/%2E%2e/x",
            b"/api/proxy/%252e%252e/secret", b"/api/proxy/a/..%2fsecret", b"/api/proxy/a/..%2F..%2Fetc",
            b"/api/proxy/a\\..\\x", b"/api/proxy/a%5c..%5cx", b"/api/proxy//evil.test/x",
            b"/api/proxy/a\x00b", b"/api/proxy/a\x7fb", b"/api/proxy/caf\xc3\xa9", b"/api/proxy/a b",
            b"*", b"evil.test:443", b"http://evil.test/../x",
            b"/api/proxy/..;/x", b"/api/proxy/.;/x", b"/api/proxy/%2e%2e;/x", b"/api/proxy/..%3b/x",
            b"/api/proxy/..%3B/x", b"/api/proxy/.%2e;/x", b"/api/proxy/%2E%2E;x=1/y", b"/api/proxy/a/..;",
            b"/api/proxy/%252e%252e%253b/x",
        ):  # fmt: skip
            self.assertIsInstance(check_target(b"GET", target), TargetRefused, target)
        self.assertIsInstance(check_target(b"CONNECT", b"evil.test:443"), TargetRefused)

    def test_kept(self) -> None:
        """Ordinary targets pass unchanged; absolute-form is reduced to its path."""
        for target in (b"/api/proxy/videos?x=%2F&y=..", b"/api/proxy/a%2Fb", b"/api/proxy/@evil.test/x",
                       b"/api/proxy/...", b"/api/proxy/a.b/c", b"/api/proxy/", b"/api/proxy/a;v=1/b",
                       b"/api/proxy/...;/x", b"/api/proxy/.a;/x"):  # fmt: skip
            self.assertEqual(check_target(b"GET", target), target)
        self.assertEqual(check_target(b"GET", b"http://evil.test:8080/api/proxy/x?q=1"), b"/api/proxy/x?q=1")
        self.assertEqual(check_target(b"GET", b"http://evil.test?q=1"), b"/?q=1")
        self.assertEqual(check_target(b"GET", b"HTTPS://evil.test"), b"/")


class FrontDoorTests(SynchronousTestCase):
    """A real proxy process, a real upstream, and a second "other" server that must never be reached."""

    def setUp(self) -> None:
        self.upstream_port = start_backend(self)
        self.other_port = start_backend(self)
        self.proxy, self.port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{self.upstream_port}/api",
            "--health-path", "", "--max-inflight", "3", "--header-timeout", "0.5", "--timeout", "3",
            "--idle-timeout", "1", "--attempts", "1",
        )  # fmt: skip
        self.addCleanup(self.never_reached)  # runs first: cleanups run last in, first out

    def never_reached(self) -> None:
        counts = json.loads(get(f"http://127.0.0.1:{self.other_port}/api/__count")[2])
        self.assertEqual(counts, {}, "the other server was reached")
        self.assertIsNone(self.proxy.process.poll(), "the proxy died")

    def last_uri(self) -> str | None:
        return json.loads(get(f"http://127.0.0.1:{self.upstream_port}/api/__last")[2])["uri"]  # type: ignore[no-any-return]

    def request(self, target: bytes, method: bytes = b"GET", extra: bytes = b"") -> bytes:
        return exchange(
            self.port,
            method + b" " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + extra + b"\r\n",
        )

    def test_escapes_refused_other_never_reached(self) -> None:
        """Path tricks get 400 JSON BAD_REQUEST; absolute-form never reaches the host it names."""
        other = f"127.0.0.1:{self.other_port}".encode()
        for target in (b"/api/proxy/../x", b"/api/proxy/%2e%2e/x", b"/api/proxy/%252e%252e/x",
                       b"/api/proxy/a%5c..%5cx", b"/api/proxy//" + other + b"/x"):  # fmt: skip
            answer = self.request(target)
            self.assertEqual(status_of(answer), 400, target)
            self.assertEqual(
                json.loads(answer.split(b"\r\n\r\n", 1)[1])["details"]["errorType"], "BAD_REQUEST"
            )
        answer = self.request(b"http://" + other + b"/api/proxy/abs?x=1")
        self.assertEqual(status_of(answer), 200)
        self.assertEqual(self.last_uri(), "/api/abs?x=1")
        answer = self.request(b"/api/proxy/@" + other + b"/at")
        self.assertEqual(status_of(answer), 200)
        self.assertEqual(self.last_uri(), f"/api/@127.0.0.1:{self.other_port}/at")
        self.assertEqual(status_of(self.request(other, b"CONNECT")), 400)

    def test_crlf_never_reaches_headers(self) -> None:
        """A bare CR in a header value never splits into a new header upstream."""
        answer = self.request(b"/api/proxy/crlf", extra=b"X-A: one\rInjected: yes\r\n")
        if status_of(answer) == 200:
            body = answer.split(b"\r\n\r\n", 1)[1]
            self.assertNotIn(b"Injected", body)
        else:
            self.assertEqual(status_of(answer), 400)

    def test_head_limits(self) -> None:
        """A too long request line gets 414; too many or too large headers 431; all JSON."""
        self.assertEqual(status_of(self.request(b"/api/proxy/" + b"a" * 9000)), 414)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        self.assertEqual(status_of(self.request(b"/api/proxy/x", extra=many)), 431)
        large = b"X-Big: " + b"v" * 40000 + b"\r\n"
        answer = self.request(b"/api/proxy/x", extra=large)
        self.assertIn(status_of(answer), (431,))
        self.assertIn(b"HEADERS_TOO_LARGE", answer)

    def test_slowloris(self) -> None:
        """A client that sends its headers too slowly gets 408 and is disconnected."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /api/proxy/x HTTP/1.1\r\nHost: p\r\n")
            time.sleep(0.2)
            sock.sendall(b"X-Slow: 1\r\n")
            answer = sock.recv(65536)
            rest = sock.recv(65536)
        self.assertEqual(status_of(answer), 408)
        self.assertEqual(rest, b"")
        self.assertLess(time.monotonic() - started, 3)

    def test_idle_connection_closed(self) -> None:
        """A kept-alive connection left idle is closed after --idle-timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /api/proxy/idle HTTP/1.1\r\nHost: p\r\n\r\n")
            first = sock.recv(65536)
            self.assertEqual(status_of(first), 200)
            started = time.monotonic()
            rest = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self.assertNotIn(b"HTTP/1.1", rest)
            self.assertLess(time.monotonic() - started, 4)

    def test_ambiguous_framing(self) -> None:
        """Content-Length with Transfer-Encoding, repeated or invalid Content-Length get 400, never forwarded."""
        before = self.last_uri()
        for head in (
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            b"Content-Length: 5\r\nContent-Length: 6\r\n",
            b"Content-Length: 5, 6\r\n",
            b"Content-Length: +5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 0x5\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
        ):
            answer = exchange(
                self.port, b"POST /api/proxy/smuggle HTTP/1.1\r\nHost: p\r\n" + head + b"\r\nhello"
            )
            self.assertEqual(status_of(answer), 400, head)
        self.assertEqual(self.last_uri(), before)

    def test_pipelining_in_order(self) -> None:
        """Pipelined requests are answered in order, even when the first is the slow one."""
        answer = exchange(
            self.port,
            b"GET /api/proxy/slowish HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /api/proxy/fast HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        )
        first = answer.find(b'{"slow": "done"}')
        second = answer.find(b'"uri": "/api/fast"')
        self.assertTrue(0 <= first < second, answer)

    def test_max_inflight(self) -> None:
        """Beyond --max-inflight new requests get 503 OVERLOADED with Retry-After at once."""
        socks = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(b"GET /api/proxy/slow HTTP/1.1\r\nHost: p\r\n\r\n")
                socks.append(sock)
            time.sleep(0.2)
            started = time.monotonic()
            answer = self.request(b"/api/proxy/x")
            self.assertLess(time.monotonic() - started, 1)
            self.assertEqual(status_of(answer), 503)
            self.assertIn(b"OVERLOADED", answer)
            self.assertIn(b"Retry-After", answer)
        finally:
            for sock in socks:
                sock.close()

    def test_fuzz_then_still_answering(self) -> None:
        """Hundreds of malformed requests later, the proxy still answers a valid one."""
        rng = random.Random(1234)
        pieces = [b"GET", b"POST", b"\x00", b"\r\n", b"\n", b" ", b"HTTP/1.1", b"HTTP/9.9", b"/api/proxy/x",
                  b"Host: p", b":", b"Content-Length: ", b"99999999999", b"Transfer-Encoding: chunked",
                  b"\xff\xfe", b"%", b"..", b"\t", b"a" * 100, b"0\r\n\r\n", b"Expect: 100-continue"]  # fmt: skip
        statuses: dict[int, int] = {}
        for _ in range(300):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 20)))
            if rng.random() < 0.3:
                data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
            answer = exchange(self.port, data + b"\r\n\r\n", timeout=1.0)
            statuses[status_of(answer)] = statuses.get(status_of(answer), 0) + 1
        self.assertNotIn(500, statuses)
        answer = self.request(b"/api/proxy/after-fuzz")
        self.assertEqual(status_of(answer), 200)
        print(f"\nfuzz: 300 malformed requests, answers by status: {dict(sorted(statuses.items()))}")
