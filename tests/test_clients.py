"""
Well-known client libraries through the proxy: a WebSocket echo with the
``websockets`` library, and ``requests`` against ``httpbin`` with the proxy
mounted at ``/``, compared with the same calls made directly.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from .helpers import LoopbackMixin, refused_port
from .test_cli import BIN, Child, start_proxy_process

ROOT = Path(__file__).resolve().parent.parent


class WebSocketTests(LoopbackMixin, TestCase):
    def start_ws_upstream(self) -> int:
        from websockets.sync.server import serve

        def echo(connection: Any) -> None:
            for message in connection:
                connection.send(message)

        server = serve(echo, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(lambda: (server.shutdown(), thread.join(5)))
        port: int = server.socket.getsockname()[1]
        return port

    @inlineCallbacks
    def test_echo(self) -> Any:
        """A WebSocket client talks to an echo server through the proxy, text and binary."""
        port = self.start_ws_upstream()
        proxy, _ = self.start_proxy(upstream=f"http://127.0.0.1:{port}/api", health_path="")

        def talk() -> list[Any]:
            from websockets.sync.client import connect

            url = proxy.replace("http://", "ws://") + "/api/proxy/videos/7/ws"
            with connect(url, open_timeout=5) as ws:
                answers = []
                for message in ("hello", b"\x00\x01binary", "x" * 200_000):
                    ws.send(message)
                    answers.append(ws.recv(timeout=5))
                return [ws.response.headers.get("x-request-id"), *answers]

        request_id, *answers = yield deferToThread(talk)
        self.assertEqual(answers, ["hello", b"\x00\x01binary", "x" * 200_000])
        self.assertEqual(len(request_id), 32)

    @inlineCallbacks
    def test_refused_handshake(self) -> Any:
        """A WebSocket handshake to a backend that is not running gets the proxy's 503 JSON."""
        url = f"http://127.0.0.1:{refused_port()}/api"
        proxy, _ = self.start_proxy(upstream=url, health_path="", backoff=0.01)

        def talk() -> Any:
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            try:
                connect(proxy.replace("http://", "ws://") + "/api/proxy/ws", open_timeout=5)
            except InvalidStatus as e:
                return e.response
            raise AssertionError("the handshake should fail")

        response = yield deferToThread(talk)
        self.assertEqual(response.status_code, 503)
        self.assertIn(b"ECONNREFUSED", response.body)


class RequestsThroughProxyTests(SynchronousTestCase):
    """``requests`` behaves the same through ``--prefix /`` as against httpbin directly."""

    def setUp(self) -> None:
        try:
            import httpbin  # noqa: F401
            import requests  # noqa: F401
        except ImportError as e:  # pragma: no cover
            raise SkipTest(f"httpbin or requests missing: {e}") from None
        httpbin_app = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "web", "--wsgi", "httpbin.app",
             "--listen", "tcp:0:interface=127.0.0.1"],
        )  # fmt: skip
        backend_port = httpbin_app.wait_for(r"Site starting on (\d+)").group(1)
        _, proxy_port = start_proxy_process(
            self,
            "--prefix", "/", "--upstream", f"http://127.0.0.1:{backend_port}",
            "--health-path", "/status/200", "--admin-listen", "none",
        )  # fmt: skip
        self.direct = f"http://127.0.0.1:{backend_port}"
        self.proxied = f"http://127.0.0.1:{proxy_port}"

    def both(self, call: Any) -> tuple[Any, Any]:
        import requests

        results = []
        for base in (self.direct, self.proxied):
            with requests.Session() as session:
                results.append(call(session, base))
        return results[0], results[1]

    def test_same_behaviour(self) -> None:
        """Redirects, cookies, gzip, HEAD, streaming, basic and digest auth match (chunked uploads: below)."""
        from requests.auth import HTTPDigestAuth

        def redirects(s: Any, base: str) -> Any:
            r = s.get(base + "/redirect/3")
            a = s.get(base + "/absolute-redirect/2")
            return (r.status_code, len(r.history), r.url[len(base) :], a.status_code, len(a.history),
                    a.url[len(base) :])  # fmt: skip

        def cookies(s: Any, base: str) -> Any:
            s.get(base + "/cookies/set?flavour=oat&size=2")
            s.get(base + "/cookies/delete?size")
            return s.get(base + "/cookies").json()

        def compressed(s: Any, base: str) -> Any:
            r = s.get(base + "/gzip")
            return r.status_code, r.headers["Content-Encoding"], r.json()["gzipped"]

        def head(s: Any, base: str) -> Any:
            r = s.head(base + "/bytes/1234?seed=3")
            return r.status_code, r.headers.get("Content-Length"), r.content

        def streaming(s: Any, base: str) -> Any:
            r = s.get(base + "/stream/5", stream=True)
            return [len(line) > 0 for line in r.iter_lines()]

        def basic(s: Any, base: str) -> Any:
            ok = s.get(base + "/basic-auth/user/pass", auth=("user", "pass"))
            bad = s.get(base + "/basic-auth/user/pass", auth=("user", "wrong"))
            return ok.status_code, ok.json(), bad.status_code

        def digest(s: Any, base: str) -> Any:
            r = s.get(base + "/digest-auth/auth/user/pass", auth=HTTPDigestAuth("user", "pass"))
            return r.status_code, r.json()

        def large(s: Any, base: str) -> Any:
            r = s.get(base + "/bytes/102400?seed=7")
            return r.status_code, r.content

        for check in (redirects, cookies, compressed, head, streaming, basic, digest, large):
            direct, proxied = self.both(check)
            self.assertEqual(direct, proxied, check.__name__)

    def test_chunked_upload(self) -> None:
        """A chunked upload through the proxy gets the answer the same bytes sent with a length get directly."""
        import requests

        def parts() -> Any:
            yield b"a" * 1000
            yield b"b" * 5000

        refused = requests.post(self.direct + "/post", data=parts(), timeout=10)
        self.assertEqual(refused.status_code, 501)  # werkzeug cannot read a chunked body itself
        direct = requests.post(self.direct + "/post", data=b"a" * 1000 + b"b" * 5000, timeout=10)
        proxied = requests.post(self.proxied + "/post", data=parts(), timeout=10)
        self.assertEqual((proxied.status_code, direct.status_code), (200, 200))
        seen = [r.json() for r in (direct, proxied)]
        for key in ("data", "form", "files", "json"):
            self.assertEqual(seen[1][key], seen[0][key], key)
        for name in ("Content-Length", "Transfer-Encoding", "Content-Type"):
            self.assertEqual(seen[1]["headers"].get(name), seen[0]["headers"].get(name), name)
        self.assertEqual(seen[1]["data"], "a" * 1000 + "b" * 5000)

    def test_redirect_through_prefix(self) -> None:
        """Absolute redirects from the backend come back pointing at the proxy."""
        import requests

        r = requests.get(self.proxied + "/absolute-redirect/1", allow_redirects=False, timeout=10)
        self.assertEqual(r.headers["Location"], self.proxied + "/get")


__all__ = ["sys"]
