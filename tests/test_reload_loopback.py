"""
SIGHUP reload end to end: a real C{twistd -n sora2proxy --config FILE}
process, two real upstreams on loopback, the real signal.  A request in
flight and an open WebSocket survive the switch of upstream; a broken file
changes nothing and is one log line.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .test_cli import eventually, get, start_proxy_process

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class NamedUpstream:
    """
    A threaded HTTP upstream on loopback that answers its name; a path with
    C{/slow} waits for L{release}; a WebSocket upgrade echoes bytes.
    """

    def __init__(self, test: SynchronousTestCase, name: str) -> None:
        self.name = name
        self.paths: list[str] = []
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                upstream.paths.append(self.path)
                if self.headers.get("upgrade", "").lower() == "websocket":
                    self.echo()
                    return
                if "/slow" in self.path:
                    upstream.release.wait(30)
                body = upstream.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def echo(self) -> None:
                key = self.headers["sec-websocket-key"].encode()
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
                self.wfile.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                )
                self.wfile.flush()
                while data := self.connection.recv(65536):
                    self.connection.sendall(data)
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        test.addCleanup(self.server.server_close)
        test.addCleanup(self.server.shutdown)
        test.addCleanup(self.release.set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def open_websocket(port: int) -> socket.socket:
    """A WebSocket through the proxy, its 101 read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /api/proxy/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def echoed(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


class ReloadLoopbackTests(SynchronousTestCase):
    def write(self, text: str) -> None:
        with open(self.path + ".new", "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(self.path + ".new", self.path)  # as editors and config tools do

    def test_sighup_switches_upstream(self) -> None:
        """After SIGHUP new requests reach the new upstream; the slow request and the WebSocket carry on."""
        a, b = NamedUpstream(self, "A"), NamedUpstream(self, "B")
        self.path = os.path.join(tempfile.mkdtemp(), "sora2proxy.toml")
        self.write(f'upstream = ["{a.url}"]\nadmin-listen = "none"\nhealth-path = ""\n')
        proxy, port = start_proxy_process(self, "--config", self.path)
        base = f"http://127.0.0.1:{port}/api/proxy"
        self.assertEqual(get(base + "/hello")[2], b"A")

        websocket = open_websocket(port)
        self.addCleanup(websocket.close)
        self.assertEqual(echoed(websocket, b"before"), b"before")
        slow: list[bytes] = []
        thread = threading.Thread(target=lambda: slow.append(urllib.request.urlopen(base + "/slow").read()))
        thread.start()
        self.assertTrue(eventually(lambda: "/api/slow" in a.paths))

        self.write(f'upstream = ["{b.url}"]\nadmin-listen = "none"\nhealth-path = ""\nmax-body = 10\n')
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_for(r"Configuration reloaded from .*sora2proxy\.toml")
        self.assertEqual(get(base + "/after")[2], b"B")
        self.assertEqual(get(base + "/after")[2], b"B")
        self.assertEqual(post(base + "/upload", b"x" * 11), 413)  # the new --max-body

        a.release.set()
        thread.join(10)
        self.assertEqual(slow, [b"A"])
        self.assertEqual(echoed(websocket, b"after"), b"after")
        self.assertIsNone(proxy.process.poll())

    def test_broken_file_changes_nothing(self) -> None:
        """A broken file and SIGHUP: the same upstream still serves, and one log line says why."""
        a = NamedUpstream(self, "A")
        self.path = os.path.join(tempfile.mkdtemp(), "sora2proxy.toml")
        self.write(f'upstream = ["{a.url}"]\nadmin-listen = "none"\n')
        proxy, port = start_proxy_process(self, "--config", self.path)
        self.assertEqual(get(f"http://127.0.0.1:{port}/api/proxy/x")[2], b"A")  # serving: SIGHUP handled
        self.write('upstream = ["http://127.0.0.1:1/api"]\nattempts = 0\n')
        before = len(proxy.lines)
        proxy.process.send_signal(signal.SIGHUP)
        line = proxy.wait_for(r"Configuration not reloaded.*").group(0)
        self.assertIn("--attempts: must be a whole number of 1 or more, got 0", line)
        self.assertEqual(get(f"http://127.0.0.1:{port}/api/proxy/x")[2], b"A")
        said = [x for x in proxy.lines[before:] if "reload" in x.lower() or "attempts" in x]
        self.assertEqual(len(said), 1, said)
        self.assertIsNone(proxy.process.poll())


class WorkersReloadTests(SynchronousTestCase):
    def test_parent_passes_sighup_to_workers(self) -> None:
        """With --workers, SIGHUP to the parent reloads every worker, none restarted."""
        from .helpers import refused_port
        from .test_cli import BIN, Child
        from .test_workers import _count, _until

        a, b = NamedUpstream(self, "A"), NamedUpstream(self, "B")
        path = os.path.join(tempfile.mkdtemp(), "sora2proxy.toml")
        with open(path, "w", encoding="utf-8") as file:
            file.write(f'upstream = ["{a.url}"]\nhealth-path = ""\nworkers = 2\n')
        port = refused_port()
        parent = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--config", path,
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--admin-listen", "none"],
        )  # fmt: skip
        _until(lambda: all(_count(parent, f"[worker-{i}]", "ProxySite starting on") for i in (0, 1)))
        self.assertEqual(get(f"http://127.0.0.1:{port}/api/proxy/x")[2], b"A")
        with open(path, "w", encoding="utf-8") as file:
            file.write(f'upstream = ["{b.url}"]\nhealth-path = ""\nworkers = 2\n')
        parent.process.send_signal(signal.SIGHUP)
        _until(lambda: all(_count(parent, f"[worker-{i}]", "Configuration reloaded") for i in (0, 1)))
        answers = {get(f"http://127.0.0.1:{port}/api/proxy/y")[2] for _ in range(20)}
        self.assertEqual(answers, {b"B"})
        self.assertEqual(_count(parent, "[worker-", "exited"), 0)
        self.assertIsNone(parent.process.poll())
