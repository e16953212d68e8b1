"""
In headless Chromium: a page's EventSource through the proxy sees a
proxy-error event while the backend is down, and once the backend is back
it reconnects by itself (no page script reconnects) and receives events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .helpers import LoopbackMixin, eventually, reactor
from .test_admin import chromium

PAGE = b"""<!doctype html><meta charset=utf-8><title>progress</title><script>
const tell = (text) => fetch("/report", {method: "POST", body: text});
const source = new EventSource("/api/proxy/events");
source.onmessage = (e) => tell("message " + e.data);
source.addEventListener("proxy-error", (e) => tell("proxy-error " + JSON.parse(e.data).details.errorType));
</script>"""


class Events(Resource):
    """A backend's progress stream: one event per connection, reconnect in 300 ms."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def render_GET(self, request: Request) -> bytes:
        self.served += 1
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"connection", b"close")  # no pooled connection outlives the backend
        return b"retry: 300\ndata: hello-%d\n\n" % self.served


class Page(Resource):
    """The page, from the proxy's origin."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


class Reports(Resource):
    """What the page tells the test."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        return b""

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.lines.append(request.content.read().decode())
        return b""


class EventSourceTests(LoopbackMixin, TestCase):
    timeout = 120

    def browse(self, url: str) -> None:
        profile = tempfile.TemporaryDirectory()
        self.addCleanup(profile.cleanup)
        browser = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile.name}", "--remote-debugging-port=0", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

        def stop() -> None:
            os.killpg(browser.pid, signal.SIGKILL)  # its own session: the browser and its helpers
            browser.wait()

        self.addCleanup(stop)

    @inlineCallbacks
    def test_reconnects_after_proxy_error(self) -> Any:
        """The page sees proxy-error while the backend is down, then events again once it is back, reconnecting by itself."""
        chromium()
        events = Events()
        backend_site = Site(events)
        listening = reactor.listenTCP(0, backend_site, interface="127.0.0.1")
        backend_port = listening.getHost().port
        _, proxy = self.start_proxy(
            upstream=f"http://127.0.0.1:{backend_port}/api", health_path="", health_interval=1, attempts=1
        )
        reports = Reports()
        root = Resource()
        root.putChild(b"page", Page())
        root.putChild(b"report", reports)
        root.putChild(b"favicon.ico", Reports())  # no 404 page (a deprecated class) for the browser's asking
        root.putChild(b"api", proxy.resource)
        page_port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(page_port.stopListening)
        self.browse(f"http://127.0.0.1:{page_port.getHost().port}/page")
        yield eventually(lambda: "message hello-1" in reports.lines, timeout=60, what="the first event")
        yield listening.stopListening()
        yield eventually(
            lambda: "proxy-error ECONNREFUSED" in reports.lines, timeout=30, what="a proxy-error"
        )
        down_at = reports.lines.index("proxy-error ECONNREFUSED")
        listening = reactor.listenTCP(backend_port, backend_site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

        def back() -> bool:
            return any(line.startswith("message ") for line in reports.lines[down_at:])

        yield eventually(back, timeout=30, what="an event after the backend came back")
