"""
Malformed request heads over real loopback sockets, sent as exact bytes: each
gets exactly one response (the proxy's JSON 400, saying what is wrong) and
then the connection closes; and C{Connection: close} is honoured wherever it
stands in the field's token list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .helpers import LoopbackMixin, RecordingUpstream, eventually
from .test_request_head import exchange

GET = b"GET /api/proxy/a HTTP/1.1\r\n"
POST_CHUNKED = b"POST /api/proxy/a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"

#: Each malformed request, and words the 400's message must hold (written
#: here by hand, never taken from the code under test).
MALFORMED = [
    (GET + b"Host: ho\x00st\r\n\r\n", "Host header's value holds a NUL byte"),
    (GET + b"Host: p\r\nX-A: a\x00b\r\n\r\n", "X-A header's value holds a NUL byte"),
    (GET + b"Host: p\r\nX-A: 1\nX-B: 2\r\n\r\n", "X-A header's value holds a bare LF byte"),
    (b"GET /api/proxy/a\xc2\x85FAKE HTTP/1.1\r\nHost: p\r\n\r\n", "request target holds a control"),
    (b"GET /api/proxy/a\rb HTTP/1.1\r\nHost: p\r\n\r\n", "request target holds a control"),
    (b"GET /api/proxy/a\xe2\x80\xa8b HTTP/1.1\r\nHost: p\r\n\r\n", "non-ASCII byte"),
    (
        b"POST /api/proxy/a HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "not two, not both",
    ),
    (
        b"POST /api/proxy/a HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "not two",
    ),
    (b"POST /api/proxy/a HTTP/1.1\r\nHost: p\r\nContent-Length: +3\r\n\r\nabc", "decimal digits only"),
    (b"POST /api/proxy/a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: xchunked\r\n\r\n", "only transfer coding"),
    (b"GET /api/proxy/a HTTP/1.2\r\nHost: p\r\n\r\n", "must be HTTP/1.1 or HTTP/1.0"),
    (b"GET /api/proxy/a HTTP/2.0\r\nHost: p\r\n\r\n", "must be HTTP/1.1 or HTTP/1.0"),
    (b"GET  /api/proxy/a HTTP/1.1\r\nHost: p\r\n\r\n", "separated by single spaces"),
    (GET + b"Host : x\r\n\r\n", "no space before the colon"),
    (b"\r\n\r\n" + GET + b"Host: p\r\n\r\n", "starts with an empty line"),
    (GET + b"Host: p\nX-A: 1\n\n", "bare LF"),
    (POST_CHUNKED + b"10000000000000000\r\nabc", "does not fit in 64 bits"),
    (POST_CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", "chunked request body is malformed"),
    (POST_CHUNKED + b"5 \r\nabcde\r\n0\r\n\r\n", "chunked request body is malformed"),
    (POST_CHUNKED + b"0x5\r\nabcde\r\n0\r\n\r\n", "chunked request body is malformed"),
]


def one_response(answer: bytes) -> tuple[bytes, dict[str, bytes], bytes]:
    """
    Split an answer that must be exactly one response: its status line, its
    headers (lower-cased names) and a body of exactly C{Content-Length}
    bytes, with nothing after it.
    """
    head, separator, body = answer.partition(b"\r\n\r\n")
    assert separator, answer
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers[b"content-length"]) == len(body), f"bytes after the response: {answer!r}"
    return lines[0], headers, body


class MalformedHeadsGetOneAnswer(LoopbackMixin, TestCase):
    timeout = 15

    def proxy(self, upstream: RecordingUpstream) -> str:
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", header_timeout=60, idle_timeout=60)
        return proxy

    @inlineCallbacks
    def test_each_malformed_head_gets_one_json_400(self) -> Any:
        """Every malformed head gets one JSON 400 naming what is wrong, then the connection closes."""
        upstream = RecordingUpstream()
        proxy = self.proxy(upstream)
        for request, words in MALFORMED:
            answer = yield exchange(proxy, request)
            status, headers, body = one_response(answer)
            self.assertEqual(status, b"HTTP/1.1 400 Bad Request", request)
            self.assertEqual(headers[b"content-type"], b"application/json", request)
            error = json.loads(body)
            self.assertEqual(error["details"]["errorType"], "BAD_REQUEST", request)
            self.assertIn(words, error["message"], request)
        self.assertEqual(upstream.seen, [])


class LongRequestLine(LoopbackMixin, TestCase):
    timeout = 15

    @inlineCallbacks
    def test_empty_line_first_does_not_lift_the_limit(self) -> Any:
        """A request line over 8 KiB gets 414 also when an empty line comes before it."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="")
        target = b"/api/proxy/" + b"a" * 9000
        for before in (b"", b"\r\n"):
            answer = yield exchange(proxy, before + b"GET " + target + b" HTTP/1.1\r\nHost: p\r\n\r\n")
            status, _, body = one_response(answer)
            self.assertEqual(status, b"HTTP/1.1 414 URI Too Long", before)
            self.assertEqual(json.loads(body)["details"]["errorType"], "URI_TOO_LONG")
        self.assertEqual(upstream.seen, [])


class ConnectionCloseTokens(LoopbackMixin, TestCase):
    timeout = 15

    @inlineCallbacks
    def test_close_anywhere_in_the_list(self) -> Any:
        """Connection: close is honoured first, last, in any case and in a second field: one answer, then closed."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        proxy, _ = self.start_proxy(upstream=url, health_path="", idle_timeout=60)
        for fields in (
            b"Connection: close, X-Foo\r\n",
            b"Connection: X-Foo,close\r\n",
            b"Connection: CLOSE\r\n",
            b"Connection: keep-alive ,\tClose\r\n",
            b"Connection: X-Foo\r\nConnection: close\r\n",
        ):
            # A second request follows on the same connection: it must not be
            # answered (its own close ends the exchange if it is).
            request = GET + b"Host: p\r\n" + fields + b"\r\n" + GET + b"Host: p\r\nConnection: close\r\n\r\n"
            answer = yield exchange(proxy, request)
            status, headers, _ = one_response(answer)
            self.assertEqual(status, b"HTTP/1.1 200 OK", fields)
            self.assertEqual(headers.get(b"connection"), b"close", fields)
        self.assertEqual(len(upstream.seen), 5)


#: Each refusal: the request, the status, the access line's method and
#: target, and the error type.
REFUSALS = [
    (GET + b"Host: p\r\nX-A: a\x00b\r\n\r\n", 400, "GET /api/proxy/a", "BAD_REQUEST"),
    (b"GET /api/proxy/b HTTP/1.1\r\nHost: evil.example/x?\r\n\r\n", 400, "GET /api/proxy/b", "BAD_REQUEST"),
    (b"PUT  /api/proxy/c HTTP/1.1\r\nHost: p\r\n\r\n", 400, "PUT -", "BAD_REQUEST"),
    (
        b"GET /api/proxy/" + b"d" * 9000 + b" HTTP/1.1\r\nHost: p\r\n\r\n",
        414,
        "GET /api/proxy/ddd",
        "URI_TOO_LONG",
    ),
    (
        b"GET /api/proxy/e HTTP/1.1\r\nHost: p\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n",
        431,
        "GET /api/proxy/e",
        "HEADERS_TOO_LARGE",
    ),
    (
        b"POST /api/proxy/f HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n",
        413,
        "POST /api/proxy/f",
        "BODY_TOO_LARGE",
    ),
    (b"GET /api/proxy/g HTTP/1.1\r\nHost: p\r\n", 408, "GET /api/proxy/g", "HEADER_TIMEOUT"),
]


class RefusalsAreVisible(LoopbackMixin, TestCase):
    timeout = 20

    @inlineCallbacks
    def test_each_refusal_logged_and_counted(self) -> Any:
        """Every refused request writes one access line and counts in the metrics and on the status page."""
        upstream = RecordingUpstream()
        _, url = self.start_upstream(upstream)
        log = Path(self.mktemp()).absolute()
        log.parent.mkdir(parents=True, exist_ok=True)
        proxy, p = self.start_proxy(
            upstream=url,
            health_path="",
            access_log=str(log),
            header_timeout=0.5,
            idle_timeout=60,
            max_body=10,
        )
        for request, status, _, _ in REFUSALS:
            answer = yield exchange(proxy, request)
            self.assertEqual(answer.split(b" ", 2)[1], str(status).encode(), request[:60])
        yield eventually(lambda: log.exists() and len(log.read_text().splitlines()) >= len(REFUSALS))
        lines = log.read_text().splitlines()
        self.assertEqual(len(lines), len(REFUSALS), lines)
        for line, (_, status, request, error_type) in zip(lines, REFUSALS, strict=True):
            self.assertIn(f" {request}", line)
            self.assertRegex(line, rf" {status} tries=0 \d+ms {error_type} id=[0-9a-f]{{32}}$")
        self.assertNotIn("d" * 1025, lines[3])  # a 414's target is cut
        sample = p.telemetry.registry.get_sample_value
        for error_type, count in (
            ("BAD_REQUEST", 3),
            ("URI_TOO_LONG", 1),
            ("HEADERS_TOO_LARGE", 1),
            ("BODY_TOO_LARGE", 1),
            ("HEADER_TIMEOUT", 1),
        ):
            self.assertEqual(sample("sora2proxy_errors_total", {"error_type": error_type}), count, error_type)
        self.assertEqual(sample("sora2proxy_requests_total", {"method": "GET", "status": "400"}), 2)
        self.assertEqual(sample("sora2proxy_requests_total", {"method": "GET", "status": "408"}), 1)
        self.assertEqual(p.telemetry.in_flight, 0)
        groups = p.telemetry.board.snapshot([], 0, False)["errors"]["groups"]
        self.assertEqual(
            {g["errorType"]: g["total"] for g in groups},
            {
                "BAD_REQUEST": 3,
                "URI_TOO_LONG": 1,
                "HEADERS_TOO_LARGE": 1,
                "BODY_TOO_LARGE": 1,
                "HEADER_TIMEOUT": 1,
            },
        )
        self.assertEqual(upstream.seen, [])
