"""
The admin port: /health, /ready, /metrics (parsed with prometheus_client's
own parser), /status and /status.json; the status page in headless Chromium;
JSON logs; and the graceful drain of a real twistd process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from sora2proxy import ProxyConfig, build_proxy
from sora2proxy.http._site import ProxySite, QuietSite
from sora2proxy.ops._admin import Admin

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, reactor, refused_port, wait
from .test_cli import BIN, Child, get, start_backend, start_proxy_process
from .test_cli import eventually as blocking_eventually


def health(proxy: Any, index: int = 0) -> str:
    """The health an upstream of C{proxy} has now: unknown, up or down."""
    return str(proxy.balancer.upstreams[index].health.status.value)


class AdminTests(LoopbackMixin, TestCase):
    def setup_all(self, upstream_url: str, **options: Any) -> tuple[str, str, Any]:
        config = ProxyConfig(upstream=upstream_url, **options)
        proxy = build_proxy(config, reactor)
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)
        public = reactor.listenTCP(0, ProxySite(proxy.resource, config), interface="127.0.0.1")
        self.addCleanup(public.stopListening)
        admin = Admin(proxy.telemetry, proxy.balancer)
        port = reactor.listenTCP(0, QuietSite(admin.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return (
            f"http://127.0.0.1:{public.getHost().port}",
            f"http://127.0.0.1:{port.getHost().port}",
            proxy,
        )

    @inlineCallbacks
    def test_health_and_ready(self) -> Any:
        """/health is 200; /ready is 200 with a healthy upstream, 503 when none is, 503 when draining."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        _, admin, proxy = self.setup_all(url, health_interval=0.1)
        yield eventually(lambda: health(proxy) == "up", what="the first health check")
        response, content = yield self.fetch(b"GET", admin + "/health")
        self.assertEqual((response.code, json_of(content)), (200, {"status": "alive"}))
        response, content = yield self.fetch(b"GET", admin + "/ready")
        self.assertEqual(response.code, 200)
        upstream.health = "down"
        yield eventually(lambda: health(proxy) == "down", what="the upstream seen down")
        response, content = yield self.fetch(b"GET", admin + "/ready")
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["available"], [])
        upstream.health = "ok"
        yield eventually(lambda: health(proxy) == "up", what="the upstream seen up again")
        proxy.telemetry.draining = True
        response, content = yield self.fetch(b"GET", admin + "/ready")
        self.assertEqual(response.code, 503)
        self.assertTrue(json_of(content)["draining"])

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """/metrics counts requests, tries, retries, in-flight and health, in Prometheus text format."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        dead = f"http://127.0.0.1:{refused_port()}/api"
        public, admin, proxy = self.setup_all((url, dead), health_interval=0.1, backoff=0.01)
        yield eventually(lambda: (health(proxy, 0), health(proxy, 1)) == ("up", "down"), what="both checked")
        for _ in range(3):
            yield self.fetch(b"GET", public + "/api/proxy/a")
        yield self.fetch(b"GET", public + "/elsewhere")
        response, content = yield self.fetch(b"GET", admin + "/metrics")
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(content.decode())
            for s in family.samples
        }
        self.assertEqual(samples[("sora2proxy_requests_total", (("method", "GET"), ("status", "200")))], 3)
        self.assertEqual(samples[("sora2proxy_requests_total", (("method", "GET"), ("status", "404")))], 1)
        self.assertEqual(samples[("sora2proxy_errors_total", (("error_type", "NOT_FOUND"),))], 1)
        self.assertEqual(
            samples[("sora2proxy_upstream_tries_total", (("outcome", "ok"), ("upstream", url)))], 3
        )
        self.assertEqual(samples[("sora2proxy_upstream_healthy", (("upstream", url),))], 1)
        self.assertEqual(samples[("sora2proxy_upstream_healthy", (("upstream", dead),))], 0)
        self.assertEqual(samples[("sora2proxy_requests_in_flight", ())], 0)
        self.assertIn(("sora2proxy_request_duration_seconds_count", (("method", "GET"),)), samples)
        self.assertIn(("sora2proxy_health_check_duration_seconds_count", (("upstream", url),)), samples)
        self.assertIn(("sora2proxy_upstream_duration_seconds_count", (("upstream", url),)), samples)

    @inlineCallbacks
    def test_retries_counted(self) -> Any:
        """Retries show in /metrics and in the status data's rates."""
        upstream = RecordingUpstream("status:503")
        _, url = self.start_upstream(upstream)
        public, admin, _ = self.setup_all(url, health_path="", backoff=0.01)
        yield self.fetch(b"GET", public + "/api/proxy/a")
        _, content = yield self.fetch(b"GET", admin + "/metrics")
        text = content.decode()
        self.assertIn(f'sora2proxy_upstream_retries_total{{upstream="{url}"}} 2.0', text)
        self.assertIn(f'sora2proxy_upstream_tries_total{{outcome="5xx",upstream="{url}"}} 3.0', text)
        _, content = yield self.fetch(b"GET", admin + "/status.json")
        self.assertGreater(json_of(content)["rates"]["retriesPerSecond"], 0)

    @inlineCallbacks
    def test_status(self) -> Any:
        """/status shows each upstream's health and errors by type with request ids; /status.json the same data, no queries."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        dead = f"http://127.0.0.1:{refused_port()}/api"
        public, admin, proxy = self.setup_all((url, dead), health_interval=0.1)
        yield eventually(lambda: (health(proxy, 0), health(proxy, 1)) == ("up", "down"), what="both checked")
        for _ in range(3):
            yield self.fetch(b"GET", public + "/nowhere?access_token=s3cret")
        response, content = yield self.fetch(b"GET", admin + "/status.json")
        data = json_of(content)
        healths = {u["url"]: u["health"] for u in data["upstreams"]}
        self.assertEqual(healths, {url: "up", dead: "down"})
        [group] = data["errors"]["groups"]
        self.assertEqual((group["errorType"], group["recent"], group["total"]), ("NOT_FOUND", 3, 3))
        self.assertEqual(group["latest"]["path"], "/nowhere")
        self.assertNotIn(b"s3cret", content)
        self.assertGreater(len(data["upstreams"][0]["timeline"]), 0)
        response, page = yield self.fetch(b"GET", admin + "/status")
        self.assertEqual(response.code, 200)
        self.assertIn(group["latest"]["requestId"].encode(), page)
        self.assertNotIn(b"s3cret", page)
        self.assertIn(b'data-health="down"', page)
        self.assertIn(b"http-equiv=refresh", page)

    @inlineCallbacks
    def test_foreign_host_refused(self) -> Any:
        """The admin port serves Host 127.0.0.1:<port>, localhost and [::1]; a DNS-rebinding Host gets 421 JSON."""
        _, admin, _ = self.setup_all(f"http://127.0.0.1:{refused_port()}/api", health_path="")
        port = admin.rsplit(":", 1)[1].encode()
        for host in (b"127.0.0.1:" + port, b"localhost", b"localhost:" + port, b"[::1]:" + port):
            response, content = yield self.fetch(
                b"GET", admin + "/health", headers=Headers({b"host": [host]})
            )
            self.assertEqual((host, response.code, json_of(content)), (host, 200, {"status": "alive"}))
        for host in (b"evil.example", b"evil.example:" + port):
            for path in ("/metrics", "/status.json", "/ready"):
                response, content = yield self.fetch(b"GET", admin + path, headers=Headers({b"host": [host]}))
                self.assertEqual((host, path, response.code), (host, path, 421))
                self.assertEqual(json_of(content)["error"], "Misdirected Request")
                self.assertNotIn(b"127.0.0.1", content)


def admin_answer(host: bytes | None, path: bytes = b"/ready") -> tuple[int, bytes]:
    """
    The status and body the admin resource gives a request that arrived on
    10.0.0.1 (say a pod's IP, the admin listening on all addresses).
    """
    from twisted.web.server import Request, Site
    from twisted.web.test.requesthelper import DummyChannel

    proxy = build_proxy(ProxyConfig(upstream="http://127.0.0.1:1/api", health_path=""), reactor)
    channel = DummyChannel()
    channel.site = Site(Admin(proxy.telemetry, proxy.balancer).resource())
    request = Request(channel)
    request.gotLength(0)
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    request.requestReceived(b"GET", path, b"HTTP/1.0")  # not chunked: the body as is
    written = channel.transport.written.getvalue()
    return int(written.split(b" ", 2)[1]), written.partition(b"\r\n\r\n")[2]


class AdminHostTests(SynchronousTestCase):
    def test_kubelet_probe(self) -> None:
        """A kubelet probe (Host: the pod IP and admin port, arriving on the pod IP) reaches /ready and /health."""
        self.assertIn(admin_answer(b"10.0.0.1:9901")[0], (200, 503))
        self.assertEqual(admin_answer(b"10.0.0.1:9901", b"/health"), (200, b'{"status": "alive"}'))
        self.assertEqual(admin_answer(b"10.0.0.1", b"/health")[0], 200)

    def test_other_addresses_and_names_refused(self) -> None:
        """Another host's address, or any name but localhost, is refused even where the request arrived on 10.0.0.1."""
        for host in (b"10.0.0.2:9901", b"sora2proxy.default.svc:9901", b"10.0.0.1.nip.io:9901"):
            status, body = admin_answer(host)
            self.assertEqual((host, status), (host, 421))
            self.assertEqual(json.loads(body)["error"], "Misdirected Request")

    def test_resource_interface(self) -> None:
        """The Host check is a twisted.web resource wrapping the admin app."""
        from twisted.web.resource import IResource, Resource
        from zope.interface.verify import verifyObject

        from sora2proxy.ops._admin_hosts import LocalHostsOnly

        self.assertTrue(verifyObject(IResource, LocalHostsOnly(Resource())))

    def test_no_host_served(self) -> None:
        """A request with no Host at all (no browser sends one) is served."""
        self.assertEqual(admin_answer(None, b"/health")[0], 200)

    def test_host_rule(self) -> None:
        """Loopback names and addresses with or without a port, and the address reached, pass; all else is refused."""
        from sora2proxy.ops._admin_hosts import host_allowed

        allowed = [b"localhost", b"LocalHost:9901", b"127.0.0.1", b"127.0.0.1:9901", b"127.9.8.7:1",
                   b"[::1]", b"[::1]:9901", b"[0:0:0:0:0:0:0:1]:80", b"10.1.2.3:9901"]  # fmt: skip
        refused = [b"evil.example", b"evil.example:9901", b"localhost.evil.example", b"127.0.0.1.evil.example",
                   b"10.1.2.4:9901", b"[::2]:9901", b"::1", b"127.0.0.1:x", b"[::1", b"[::1]x",
                   b"[evil.example]", b"", b"\xff", b"2130706433", b"localhost:9901:9901"]  # fmt: skip
        for host in allowed:
            self.assertTrue(host_allowed([host], "10.1.2.3"), host)
        for host in refused:
            self.assertFalse(host_allowed([host], "10.1.2.3"), host)
        self.assertFalse(host_allowed([b"localhost", b"localhost"], "10.1.2.3"))
        self.assertFalse(host_allowed([b"10.1.2.3"], None))
        self.assertTrue(host_allowed([b"10.1.2.3"], "::ffff:10.1.2.3"))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SkipTest("no Chromium on this machine (.ci/run installs Debian's chromium)")


def dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    return result.stdout


def status_data(admin_port: str) -> Any:
    """The proxy process's /status.json."""
    return json.loads(get(f"http://127.0.0.1:{admin_port}/status.json")[2])


def upstream_healths(admin_port: str) -> list[str]:
    """Each upstream's health as the proxy process's /status.json says."""
    return [u["health"] for u in status_data(admin_port)["upstreams"]]


class BrowserTests(SynchronousTestCase):
    def test_status_page_shows_upstream_going_down(self) -> None:
        """In headless Chromium the status page renders, then shows the upstream going down."""
        chromium()
        backend = Child(self, [sys.executable, "-m", "tests.upstream_main"])
        backend_port = backend.wait_for(r"listening on (\d+)").group(1)
        proxy = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
             "--admin-listen", "tcp:0:interface=127.0.0.1", "--upstream", f"http://127.0.0.1:{backend_port}/api",
             "--health-interval", "0.2"],
        )  # fmt: skip
        admin_port = proxy.wait_for(r"QuietSite starting on (\d+)").group(1)
        status = f"http://127.0.0.1:{admin_port}/status"
        self.assertTrue(blocking_eventually(lambda: upstream_healths(admin_port) == ["up"], seconds=10))
        dom = dump_dom(status)
        self.assertIn("sora2proxy", dom)
        self.assertIn('data-health="up"', dom)
        self.assertIn(f"127.0.0.1:{backend_port}", dom)
        backend.stop()
        self.assertTrue(blocking_eventually(lambda: upstream_healths(admin_port) == ["down"], seconds=10))
        dom = dump_dom(status)
        self.assertIn('data-health="down"', dom)
        self.assertIn("connection refused", dom)


class _Text(HTMLParser):
    """The text a person reads on a page, one line per block, without scripts or styles."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._hidden += tag in ("style", "script", "title")
        if tag in ("tr", "p", "h1", "h2", "div", "table"):
            self.parts.append("\n")
        elif tag in ("td", "th", "span"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "script", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def readable(dom: str) -> str:
    """The page's visible text, whitespace collapsed within each line."""
    parser = _Text()
    parser.feed(dom)
    return "\n".join(" ".join(line.split()) for line in "".join(parser.parts).splitlines() if line.strip())


class BrowserStatesTests(LoopbackMixin, TestCase):
    """The status page in headless Chromium, in each of its three states, with screenshots."""

    setup_all = AdminTests.setup_all

    @inlineCallbacks
    def until(self, admin: str, check: Any) -> Any:
        for _ in range(200):
            _, content = yield self.fetch(b"GET", admin + "/status.json")
            if check(json_of(content)):
                return
            yield wait(0.05)
        self.fail("the status never got there")

    @inlineCallbacks
    def look(self, url: str, name: str, shots: str) -> Any:
        """Chromium loads the page once: a screenshot, and the DOM it rendered."""
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        path = os.path.join(shots, f"status-{name}.png")
        out, err, code = yield getProcessOutputAndValue(
            chromium(),
            ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1200,900", f"--screenshot={path}", "--dump-dom", url],
            env=os.environ,
        )  # fmt: skip
        self.assertEqual(code, 0, err[-2000:])
        with open(path, "rb") as shot:
            png = shot.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        return readable(out.decode("utf-8")), png

    @inlineCallbacks
    def test_three_states(self) -> Any:
        """A person reads serving, then degraded, then not ready, with rates, latencies and grouped errors."""
        chromium()
        first, second = RecordingUpstream(), RecordingUpstream()
        _, url_a = self.start_upstream(first)
        _, url_b = self.start_upstream(second)
        public, admin, _ = self.setup_all((url_a, url_b), health_interval=0.1)
        shots = os.environ.get("STATUS_SCREENSHOTS") or self.mktemp()
        os.makedirs(shots, exist_ok=True)
        yield self.until(admin, lambda data: data["state"] == "serving")
        for _ in range(4):
            yield self.fetch(b"GET", public + "/api/proxy/videos")
        for _ in range(3):
            yield self.fetch(b"GET", public + "/nowhere?access_token=s3cret")
        serving, serving_png = yield self.look(admin + "/status", "serving", shots)
        self.assertIn("sora2proxy serving", serving)
        self.assertRegex(serving, r"requests: [0-9.]+/s over the last 60 s \(7 in all\)")
        self.assertRegex(serving, r"errors: 43% of requests over the last 60 s")
        self.assertRegex(serving, r"all requests \(arrival to last byte\) 7 [0-9.]+ ms [0-9.]+ ms [0-9.]+ ms")
        self.assertRegex(serving, rf"tries to {url_a} \(sent to response headers\) 2 [0-9.]+ ms")
        self.assertRegex(
            serving,
            r"NOT_FOUND 3 3 \d\d:\d\d:\d\d 404 · GET /nowhere\nrequest id \w+ · trace \w+ · not sent upstream",
        )
        self.assertNotIn("s3cret", serving)

        second.health = "down"
        yield self.until(admin, lambda data: data["state"] == "degraded")
        degraded, degraded_png = yield self.look(admin + "/status", "degraded", shots)
        self.assertIn("sora2proxy degraded", degraded)
        self.assertIn(f"{url_b} down\nhealth check answered HTTP 503", degraded)
        self.assertIn(f"{url_a} up", degraded)

        first.health = "down"
        yield self.until(admin, lambda data: data["state"] == "not ready")
        not_ready, not_ready_png = yield self.look(admin + "/status", "not-ready", shots)
        self.assertIn("sora2proxy not ready", not_ready)
        self.assertEqual(len({serving_png, degraded_png, not_ready_png}), 3)


class ProcessTests(SynchronousTestCase):
    def test_json_logs(self) -> None:
        """--log-format json with --access-log log: the JSON observer writes the access event's fields."""
        backend_port = start_backend(self)
        proxy, port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{backend_port}/api", "--log-format", "json",
            "--access-log", "log",
        )  # fmt: skip
        status, headers, _ = get(f"http://127.0.0.1:{port}/api/proxy/jobs?x=1")
        self.assertEqual(status, 200)
        line = proxy.wait_for(r'"request_id"').string
        event = json.loads(line)
        self.assertEqual(event["request_id"], headers["X-Request-Id"])
        self.assertEqual(
            (event["method"], event["path"], event["status"]), ("GET", "/api/proxy/jobs?x=1", 200)
        )
        self.assertEqual(event["tries"], 1)
        self.assertIn("duration_ms", event)

    def test_graceful_drain(self) -> None:
        """On SIGTERM /ready turns 503 at once and a slow request in flight still completes."""
        backend_port = start_backend(self)
        proxy = Child(
            self,
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
             "--admin-listen", "tcp:0:interface=127.0.0.1", "--upstream", f"http://127.0.0.1:{backend_port}/api",
             "--health-interval", "0.2"],
        )  # fmt: skip
        admin_port = proxy.wait_for(r"QuietSite starting on (\d+)").group(1)
        port = proxy.wait_for(r"ProxySite starting on (\d+)").group(1)
        self.assertTrue(blocking_eventually(lambda: upstream_healths(admin_port) == ["up"], seconds=10))
        self.assertEqual(get(f"http://127.0.0.1:{admin_port}/ready")[0], 200)
        answers: list[Any] = []
        slow = threading.Thread(target=lambda: answers.append(get(f"http://127.0.0.1:{port}/api/proxy/slow")))
        slow.start()
        self.assertTrue(blocking_eventually(lambda: status_data(admin_port)["inFlight"] == 1, seconds=10))
        os.kill(proxy.process.pid, signal.SIGTERM)
        self.assertTrue(
            blocking_eventually(lambda: get(f"http://127.0.0.1:{admin_port}/ready")[0] == 503, seconds=10)
        )
        ready = get(f"http://127.0.0.1:{admin_port}/ready")
        self.assertEqual(ready[0], 503)
        self.assertTrue(json.loads(ready[2])["draining"])
        with self.assertRaises(OSError):
            get(f"http://127.0.0.1:{port}/api/proxy/a", timeout=2)  # no longer accepting
        slow.join(10)
        self.assertEqual(answers[0][0], 200)
        self.assertEqual(json.loads(answers[0][2]), {"slow": "done"})
        # twistd exits with the signal that stopped it, after the drain.
        self.assertIn(proxy.process.wait(10), (0, -signal.SIGTERM))


class JSONLinesTests(SynchronousTestCase):
    def test_flat_json_line(self) -> None:
        """An access event becomes one flat JSON line with its fields and formatted message."""
        import io

        from twisted.logger import LogLevel
        from twisted.python.failure import Failure

        from sora2proxy.ops._logs import JSONLinesObserver

        out = io.StringIO()
        observer = JSONLinesObserver(out)
        observer(
            {
                "log_format": "{method} {path} {status}",
                "log_level": LogLevel.info,
                "log_namespace": "sora2proxy.forward._resource.ProxyResource",
                "log_time": 5.0,
                "method": "GET",
                "path": "/api/proxy/a",
                "status": 200,
                "request_id": "r1",
                "obj": object(),
            }
        )
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            observer({"log_format": "boom", "log_failure": Failure(), "log_level": LogLevel.critical})
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual(first["message"], "GET /api/proxy/a 200")
        self.assertEqual((first["level"], first["request_id"], first["status"]), ("info", "r1", 200))
        self.assertNotIn("obj", first)
        self.assertIn("ZeroDivisionError", second["traceback"])
        self.assertEqual(second["level"], "critical")


class WindowCountTests(SynchronousTestCase):
    def test_counts_the_last_minute_in_bounded_memory(self) -> None:
        """Rates count events of the last RATE_WINDOW seconds, one bucket a second, however many events."""
        from sora2proxy.ops._windows import WINDOW as RATE_WINDOW
        from sora2proxy.ops._windows import WindowCount

        count = WindowCount()
        for tick in range(3000):  # 50 events a second for 60 s
            count.add(1000 + tick / 50)
        self.assertEqual(count.total(1059.99), 3000)
        self.assertLessEqual(len(count._seconds), RATE_WINDOW + 1)
        self.assertEqual(count.total(1000 + RATE_WINDOW + 10.5), 50 * 49)  # the first ten seconds left
        self.assertEqual(count.total(5000), 0)
