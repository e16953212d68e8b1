"""
W3C trace context: a valid C{traceparent} is continued upstream (same trace
id, the proxy's own parent id, the sampled flag as received, C{tracestate}
unchanged); a missing or malformed one starts a new trace; the trace id is
in the access line, in error bodies and on the status page.
"""

from __future__ import annotations

import random
import re
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from sora2proxy.http._trace import trace_of

from .helpers import LoopbackMixin, RecordingUpstream, eventually, json_of, refused_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
HEX = re.compile(r"[0-9a-f]+")


def traced(*values: str) -> Any:
    return trace_of(Headers({b"traceparent": [v.encode() for v in values]}))


class ParseTests(SynchronousTestCase):
    def test_valid_continued(self) -> None:
        """A valid traceparent keeps its trace id and sampled flag, under a new parent id."""
        trace = traced(VALID)
        self.assertEqual((trace.trace_id, trace.sampled, trace.continued), (TRACE, "01", True))
        self.assertNotEqual(trace.span_id, PARENT)
        self.assertTrue(HEX.fullmatch(trace.span_id) and len(trace.span_id) == 16)
        self.assertEqual(trace.traceparent, f"00-{TRACE}-{trace.span_id}-01".encode())

    def test_not_sampled_kept(self) -> None:
        """A trace the client did not sample stays unsampled; other flag bits are not passed on."""
        self.assertEqual(traced(f"00-{TRACE}-{PARENT}-00").sampled, "00")
        self.assertEqual(traced(f"00-{TRACE}-{PARENT}-03").sampled, "01")
        self.assertEqual(traced(f"00-{TRACE}-{PARENT}-02").sampled, "00")

    def test_later_version(self) -> None:
        """A later version is read by its first four fields, and sent on as version 00."""
        trace = traced(f"cc-{TRACE}-{PARENT}-01-what-the-future-holds")
        self.assertEqual((trace.trace_id, trace.continued), (TRACE, True))
        self.assertTrue(trace.traceparent.startswith(b"00-"))

    def test_invalid_restarts(self) -> None:
        """A malformed traceparent starts a new trace: random ids, version 00, sampled."""
        for value in [
            VALID.upper(),
            f"ff-{TRACE}-{PARENT}-01",
            f"00-{'0' * 32}-{PARENT}-01",
            f"00-{TRACE}-{'0' * 16}-01",
            f"00-{TRACE}-{PARENT}-01-extra",
            f"00-{TRACE[:-1]}-{PARENT}-01",
            f"00-{TRACE}-{PARENT}-1",
            f"00_{TRACE}_{PARENT}_01",
            "",
            "garbage",
        ]:
            trace = traced(value)
            self.assertFalse(trace.continued, value)
            self.assertNotEqual(trace.trace_id, TRACE, value)
            self.assertTrue(HEX.fullmatch(trace.trace_id) and len(trace.trace_id) == 32, value)
            self.assertEqual(trace.sampled, "01")

    def test_any_spelling_read(self) -> None:
        """The traceparent is read whatever the case of its name, as Headers.getRawHeaders reads it."""
        for name in (b"traceparent", b"TRACEPARENT", b"TraceParent", "traceparent", "Traceparent"):
            for fill in ("constructor", "setRawHeaders", "addRawHeader"):
                headers = Headers({name: [VALID]}) if fill == "constructor" else Headers()
                if fill != "constructor":
                    getattr(headers, fill)(name, VALID if fill == "addRawHeader" else [VALID])
                self.assertEqual(headers.getRawHeaders(b"traceparent"), [VALID.encode()], (name, fill))
                self.assertEqual(trace_of(headers).trace_id, TRACE, (name, fill))

    def test_ids_from_random_bits(self) -> None:
        """New ids are the random bits in lowercase hex, zero-padded: the trace's 128, the span's 64."""
        self.addCleanup(random.setstate, random.getstate())
        for seed in range(300):
            random.seed(seed)
            new, continued = trace_of(Headers()), traced(VALID)
            random.seed(seed)
            self.assertEqual(new.trace_id + new.span_id, format(random.getrandbits(192), "048x"))
            self.assertEqual(continued.span_id, format(random.getrandbits(64), "016x"))

    def test_two_headers_invalid(self) -> None:
        """Two traceparent fields are invalid: a new trace."""
        self.assertFalse(traced(VALID, VALID).continued)

    def test_missing_new_each_time(self) -> None:
        """Without a traceparent each request gets its own new trace."""
        first, second = trace_of(Headers()), trace_of(Headers())
        self.assertNotEqual(first.trace_id, second.trace_id)
        self.assertFalse(first.continued)


class TraceLoopbackTests(LoopbackMixin, TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def access_line(self, request_id: str) -> Any:
        for event in self.events:
            if event.get("request_id") == request_id and "access" in event:
                return event["access"]
        return None

    @inlineCallbacks
    def test_continued_upstream(self) -> Any:
        """The upstream sees the same trace id with a new parent id, and tracestate unchanged."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy_url, _ = self.start_proxy(upstream=url, health_path="")
        headers = Headers({b"traceparent": [VALID.encode()], b"tracestate": [b"congo=t61rcWkgMzE,rojo=00f0"]})
        response, _ = yield self.fetch(b"GET", proxy_url + "/api/proxy/a", headers=headers)
        self.assertEqual(response.code, 200)
        [seen] = upstream.seen
        [sent] = seen.headers.getRawHeaders(b"traceparent")
        version, trace_id, parent_id, flags = sent.decode().split("-")
        self.assertEqual((version, trace_id, flags), ("00", TRACE, "01"))
        self.assertNotEqual(parent_id, PARENT)
        self.assertEqual(seen.headers.getRawHeaders(b"tracestate"), [b"congo=t61rcWkgMzE,rojo=00f0"])
        request_id = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        line = yield eventually(lambda: self.access_line(request_id), what="the access line")
        self.assertTrue(line.endswith(f"id={request_id} trace={TRACE}"), line)

    @inlineCallbacks
    def test_malformed_replaced(self) -> Any:
        """A malformed traceparent is replaced by a new trace; its tracestate is not passed on."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy_url, _ = self.start_proxy(upstream=url, health_path="")
        bad = f"00-{TRACE.upper()}-{PARENT}-01"
        headers = Headers({b"traceparent": [bad.encode()], b"tracestate": [b"congo=t61rcWkgMzE"]})
        response, _ = yield self.fetch(b"GET", proxy_url + "/api/proxy/a", headers=headers)
        [seen] = upstream.seen
        [sent] = seen.headers.getRawHeaders(b"traceparent")
        self.assertRegex(sent.decode(), r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")
        self.assertNotIn(TRACE, sent.decode().lower())
        self.assertIsNone(seen.headers.getRawHeaders(b"tracestate"))
        request_id = response.headers.getRawHeaders(b"x-request-id")[0].decode()
        line = yield eventually(lambda: self.access_line(request_id), what="the access line")
        self.assertTrue(line.endswith(f"trace={sent.decode().split('-')[1]}"), line)

    @inlineCallbacks
    def test_error_body_and_status_page(self) -> Any:
        """An error body carries details.traceId, and the status page's recent errors show it."""
        down = f"http://127.0.0.1:{refused_port()}/api"
        proxy_url, proxy = self.start_proxy(upstream=down, health_path="", attempts=1)
        headers = Headers({b"traceparent": [VALID.encode()]})
        response, content = yield self.fetch(b"GET", proxy_url + "/api/proxy/a", headers=headers)
        self.assertEqual(response.code, 503)
        self.assertEqual(json_of(content)["details"]["traceId"], TRACE)
        from twisted.web.test.requesthelper import DummyRequest

        from sora2proxy.ops._admin import Admin

        page = Admin(proxy.telemetry, proxy.balancer).status(DummyRequest([b"status"])).decode()
        self.assertIn(f"trace <code>{TRACE}</code>", page)

    @inlineCallbacks
    def test_missing_starts_trace(self) -> Any:
        """Without a traceparent the upstream gets a new one, and a lone tracestate is dropped."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy_url, _ = self.start_proxy(upstream=url, health_path="")
        headers = Headers({b"tracestate": [b"congo=t61rcWkgMzE"]})
        yield self.fetch(b"GET", proxy_url + "/api/proxy/a", headers=headers)
        [seen] = upstream.seen
        [sent] = seen.headers.getRawHeaders(b"traceparent")
        self.assertRegex(sent.decode(), r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")
        self.assertIsNone(seen.headers.getRawHeaders(b"tracestate"))
