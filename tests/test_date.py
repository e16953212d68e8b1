"""
The C{Date} header, formatted once a second on the proxy's clock, and
carried by the proxy's own answers written outside twisted.web.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sora2proxy._errors import BODY_TOO_LARGE, raw_error
from sora2proxy.http._date import HTTPDate

from .helpers import LoopbackMixin, RecordingUpstream
from .test_answers import exchange

#: RFC 9110 section 5.6.7's example date, as seconds since the epoch.
EXAMPLE = 784_111_777


class HTTPDateTests(SynchronousTestCase):
    def test_format(self) -> None:
        """The clock's time is written as RFC 9110's IMF-fixdate, in GMT."""
        clock = Clock()
        clock.advance(EXAMPLE)
        self.assertEqual(HTTPDate(clock).now(), b"Sun, 06 Nov 1994 08:49:37 GMT")

    def test_once_a_second(self) -> None:
        """Within one second the same formatted value is handed out; the next second gets a new one."""
        clock = Clock()
        clock.advance(EXAMPLE + 0.1)
        date = HTTPDate(clock)
        first = date.now()
        clock.advance(0.85)
        self.assertIs(date.now(), first)
        clock.advance(0.05)
        self.assertEqual(date.now(), b"Sun, 06 Nov 1994 08:49:38 GMT")
        clock.advance(86_400 * 365)
        self.assertEqual(date.now(), b"Mon, 06 Nov 1995 08:49:38 GMT")

    def test_raw_answer_carries_it(self) -> None:
        """An answer written as raw bytes has a Date header when given one, and none otherwise."""
        with_date = raw_error(BODY_TOO_LARGE, "too big", {}, "r1", b"Sun, 06 Nov 1994 08:49:37 GMT")
        self.assertIn(
            b"\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n", with_date.split(b"\r\n\r\n")[0] + b"\r\n"
        )
        self.assertNotIn(b"date:", raw_error(BODY_TOO_LARGE, "too big", {}, "r1"))


class DateLoopbackTests(LoopbackMixin, TestCase):
    @inlineCallbacks
    def test_refused_body_has_a_date(self) -> Any:
        """A 413 for a body over --max-body, written before the body is read, carries the current Date."""
        _, url = self.start_upstream(RecordingUpstream())
        public, _ = self.start_proxy(upstream=url, health_path="", max_body=10)
        port = int(public.rsplit(":", 1)[1])
        before = int(time.time())
        answer = yield exchange(
            port, b"POST /api/proxy/jobs HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n"
        )
        after = time.time()
        head = answer.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")
        self.assertEqual(head[0], "HTTP/1.1 413 Content Too Large")
        dates = [line.split(":", 1)[1].strip() for line in head if line.lower().startswith("date:")]
        self.assertEqual(len(dates), 1, head)
        sent = email.utils.parsedate_to_datetime(dates[0]).timestamp()
        self.assertTrue(before <= sent <= after, (before, dates[0], after))
