"""
C{--access-log}: lines buffered on the clock and written to a file or
standard output, as text or JSON; through twisted.logger by default.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy import ProxyConfig
from sora2proxy._config import ConfigError
from sora2proxy.forward._seams import escaped, record_access
from sora2proxy.ops._access_log import (
    FLUSH_EVERY,
    FLUSH_LINES,
    FileSink,
    LoggerSink,
    NoSink,
    access_sink,
)

from .helpers import MemoryHarness, RecordingUpstream
from .test_cli import get, start_backend, start_proxy_process

FIELDS = {"method": "GET", "path": "/api/proxy/a", "status": 200, "request_id": "r1"}


class FileSinkTests(SynchronousTestCase):
    def test_text_lines_written_on_the_clock(self) -> None:
        """File lines are written in a batch on the clock, each stamped with the clock's time, and no timer is left."""
        clock = Clock()
        clock.advance(86_400 * 365)
        out = io.StringIO()
        sink = FileSink(out, clock)
        sink.record("GET /api/proxy/a 200 tries=1 3ms  id=r1", FIELDS)
        sink.record("GET /api/proxy/b 502 tries=3 9ms UPSTREAM_ERROR id=r2", FIELDS)
        self.assertEqual(out.getvalue(), "")
        clock.advance(FLUSH_EVERY)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(clock.seconds()))
        self.assertEqual(lines[0], f"{stamp} [sora2proxy.access] GET /api/proxy/a 200 tries=1 3ms  id=r1")
        self.assertTrue(lines[1].endswith("UPSTREAM_ERROR id=r2"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_json_lines_carry_the_fields(self) -> None:
        """With --log-format json each access line is a JSON object with the request's fields."""
        clock = Clock()
        out = io.StringIO()
        sink = FileSink(out, clock, json_lines=True)
        sink.record("GET /api/proxy/a 200", FIELDS)
        sink.flush()
        event = json.loads(out.getvalue())
        self.assertEqual(event["message"], "GET /api/proxy/a 200")
        self.assertEqual((event["request_id"], event["status"], event["level"]), ("r1", 200, "info"))

    def test_many_lines_written_without_waiting(self) -> None:
        """A full batch of lines is written at once, without waiting for the clock."""
        out = io.StringIO()
        sink = FileSink(out, Clock())
        for _ in range(FLUSH_LINES):
            sink.record("x", FIELDS)
        self.assertEqual(len(out.getvalue().splitlines()), FLUSH_LINES)

    def test_stop_flushes_and_closes_its_file(self) -> None:
        """Stopping the file sink writes the lines it holds."""
        path = Path(self.mktemp())
        sink = access_sink(ProxyConfig(access_log=str(path)), Clock())
        assert isinstance(sink, FileSink)
        sink.startService()
        sink.record("GET / 200", FIELDS)
        sink.stopService()
        self.assertTrue(path.read_text().endswith("GET / 200\n"))

    def test_resource_follows_the_config(self) -> None:
        """A ProxyResource built without build_proxy still writes where --access-log says."""
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        harness = MemoryHarness(RecordingUpstream(), access_log=str(path))
        response = self.successResultOf(harness.client.get("http://proxy.test/api/proxy/jobs"))
        harness.flush()
        self.assertEqual(response.code, 200)
        harness.advance(FLUSH_EVERY)
        self.assertIn("GET /api/proxy/jobs 200 tries=1", path.read_text())

    def test_choices(self) -> None:
        """--access-log log, off and - pick the logger, nothing and stdout."""
        self.assertIsInstance(access_sink(ProxyConfig(access_log="log"), Clock()), LoggerSink)
        self.assertIsInstance(access_sink(ProxyConfig(access_log="off"), Clock()), NoSink)
        self.assertIsInstance(access_sink(ProxyConfig(access_log="-"), Clock()), FileSink)

    def test_logger_sink_emits_an_event(self) -> None:
        """--access-log log emits each line as a twisted.logger event with its request id."""
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        LoggerSink().record("GET / 200", FIELDS)
        self.assertEqual([(e["access"], e["request_id"]) for e in events], [("GET / 200", "r1")])

    def test_bad_destination_named(self) -> None:
        """An --access-log file in a folder that does not exist stops start-up naming the option."""
        with self.assertRaises(ConfigError) as raised:
            ProxyConfig(access_log="/no/such/dir/access.log")
        self.assertIn("--access-log", str(raised.exception))


#: Pieces of access-log text: safe ones, and each kind that is escaped or
#: that only looks unsafe (NBSP, Latin-1 letters).
_PIECES = [
    "a",
    "/x",
    "%2F",
    " ",
    "\\",
    "\x00",
    "\n",
    "\x7f",
    "\x85",
    "\xa0",
    "\xe9",
    "\u2028",
    "\u2029",
    "\u3000",
]


class _Sink:
    """
    An access sink that keeps what it is given.
    """

    wants_fields = True

    def __init__(self, lines: list[tuple[str, dict[str, object]]]) -> None:
        self._lines = lines

    def record(self, line: str, fields: dict[str, object]) -> None:
        self._lines.append((line, fields))


class EscapingTests(SynchronousTestCase):
    def test_controls_escaped(self) -> None:
        """C0, DEL, C1 (U+0085 included), U+2028/U+2029 and the backslash are written as escapes."""
        self.assertEqual(
            escaped("/a\x00b\x1fc\x7fd\x80e\x85f\x9fg"), "/a\\x00b\\x1fc\\x7fd\\x80e\\x85f\\x9fg"
        )
        self.assertEqual(escaped("a\u2028b\u2029c\\d"), "a\\u2028b\\u2029c\\x5cd")
        self.assertEqual(escaped("a\rb\nc\x1c\x1d\x1e"), "a\\x0db\\x0ac\\x1c\\x1d\\x1e")

    def test_printable_kept(self) -> None:
        """Printable ASCII is kept as is."""
        for text in ("/api/proxy/jobs?n=1&q=%2F", "caf e~!", ""):
            self.assertEqual(escaped(text), text)

    def test_bytes_logged_as_sent(self) -> None:
        """
        A target's non-ASCII bytes (read as Latin-1) are logged as the bytes
        sent, never as UTF-8 mojibake: C{/\\xc3\\xa9} for the two bytes of
        an unencoded e-acute.
        """
        self.assertEqual(escaped("/\u00c3\u00a9 \u00a0"), "/\\xc3\\xa9 \\xa0")

    def test_no_line_break_survives(self) -> None:
        """No character that splitlines() breaks on survives escaping."""
        every = "".join(chr(c) for c in range(0x3000))
        self.assertEqual(escaped(every).splitlines(), [escaped(every)])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(_PIECES), max_size=6).map("".join), st.integers(0, 5))
    def test_fields_escaped_as_escaped_says(self, text: str, where: int) -> None:
        """Whichever field holds unsafe text, the line and fields escape it exactly as escaped() does."""
        fields = ["GET", "/api/proxy/a", "", "r1", "http://u/api", "HTTP/1.1"]
        fields[where] = text
        lines: list[tuple[str, dict[str, object]]] = []
        method, path, error_type, request_id, upstream, protocol = fields
        record_access(
            _Sink(lines), method, path, 502, 2, 0.0125, error_type, request_id, upstream, "ab" * 16, protocol
        )
        m, p, e, r, u, proto = map(escaped, fields)
        shown = "" if proto == "HTTP/1.1" else f" proto={proto}"
        self.assertEqual(lines[0][0], f"{m} {p} 502 tries=2 12ms {e} id={r} trace={'ab' * 16}{shown}")
        self.assertEqual((lines[0][1]["method"], lines[0][1]["path"], lines[0][1]["error_type"]), (m, p, e))
        self.assertEqual(
            (lines[0][1]["request_id"], lines[0][1]["upstream"], lines[0][1]["protocol"]), (r, u, proto)
        )


class AccessFileProcessTests(SynchronousTestCase):
    def test_twistd_writes_access_lines_to_the_file(self) -> None:
        """Each request's line reaches the file within moments, with the request id the client saw."""
        backend_port = start_backend(self)
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        _, port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{backend_port}/api",
            "--access-log", str(path), "--log-format", "json",
        )  # fmt: skip
        ids = [get(f"http://127.0.0.1:{port}/api/proxy/jobs?n={n}")[1]["X-Request-Id"] for n in range(3)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_lines(path)) < 3:
            time.sleep(0.05)
        events = [json.loads(line) for line in _lines(path)]
        self.assertEqual([e["request_id"] for e in events], ids)
        self.assertEqual([e["path"] for e in events], [f"/api/proxy/jobs?n={n}" for n in range(3)])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
