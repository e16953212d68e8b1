"""
Property-based attack (hypothesis): generated methods, paths, queries and
headers sent over raw sockets to a real proxy, with a real upstream and a
second "other" server.  Whatever is sent: the other server receives nothing,
the proxy never answers 500 of its own, never hangs, and what the upstream
receives is exactly the configured base path plus the client's raw path and
query, as an independent model of the README's target policy says (the
model never calls the proxy's own check).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .test_cli import get, start_backend, start_proxy_process
from .test_hardening import exchange, status_of

EXAMPLES = int(os.environ.get("SORA2PROXY_PROPERTY_EXAMPLES", "150"))

PIECES = [*"abcXYZ019-_.~!$&'()*+,;=:@%/\\", "%2e", "%2E", "%2f", "%5c", "%252e", "%00", ".."]
SEGMENT = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
PATH = st.lists(SEGMENT, max_size=5).map(lambda parts: "/api/proxy/" + "/".join(parts))
QUERY = st.one_of(
    st.just(""), st.text(alphabet=st.sampled_from(list("ab=&%2F+?/.:@")), max_size=15).map(lambda q: "?" + q)
)
METHOD = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"]
)
HEADER_NAME = st.text(alphabet=st.sampled_from(list("abcxyzXYZ-")), min_size=1, max_size=10).filter(
    lambda n: (
        n.lower() not in ("host", "content-length", "transfer-encoding", "connection", "expect", "upgrade")
    )
)
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4)


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _fully_decoded(segment: str) -> str:
    while True:
        decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)
        if decoded == segment:
            return segment
        segment = decoded


def expected_target(method: str, target: str) -> str | None:
    """
    The README's target policy, written apart from the proxy's code: the
    origin-form target the proxy routes, or L{None} when it must refuse.
    """
    if method == "CONNECT" or "#" in target:
        return None  # a tunnel; a fragment, which never leaves a client
    if target.lower().startswith(("http://", "https://")):
        parts = urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if "?" in target else "")
    path = target.split("?", 1)[0]
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment == "" and index < len(segments) - 1:
            return None  # an empty segment
        decoded = _fully_decoded(segment)
        if "\\" in decoded or "\x00" in decoded:
            return None  # a backslash; a NUL, where a backend in C stops reading
        for piece in decoded.split("/"):
            if piece.partition(";")[0] in (".", ".."):
                return None  # a dot segment, parameters or not
    return target


class ModelTests(SynchronousTestCase):
    def test_model_examples(self) -> None:
        """The independent model refuses what the README lists and keeps ordinary targets."""
        for target in ("/api/proxy/../x", "/api/proxy/%252e%252e/x", "/api/proxy/a/..%2fx",
                       "/api/proxy/..;/x", "/api/proxy/%2e%2e%3b/x", "/api/proxy//x", "/api/proxy/a%5cb",
                       "/api/proxy/..%00/x", "/api/proxy/a#b"):  # fmt: skip
            self.assertIsNone(expected_target("GET", target), target)
        self.assertEqual(expected_target("GET", "/api/proxy/a;b/...?q=.."), "/api/proxy/a;b/...?q=..")
        self.assertEqual(expected_target("GET", "http://other:1/api/proxy/x?q"), "/api/proxy/x?q")
        self.assertEqual(expected_target("GET", "http://other:1?q"), "/?q")


class PropertyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.upstream_port = start_backend(self)
        self.other_port = start_backend(self)
        self.proxy, self.port = start_proxy_process(
            self,
            "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{self.upstream_port}/api",
            "--health-path", "", "--timeout", "3", "--attempts", "1", "--idempotency-store", "off",
        )  # fmt: skip
        self.tried = 0

    def last_uri(self) -> Any:
        return json.loads(get(f"http://127.0.0.1:{self.upstream_port}/api/__last")[2])["uri"]

    def test_generated_requests(self) -> None:
        """Generated requests never reach another server, never get a proxy 500, never hang."""
        statuses: dict[int, int] = {}

        history: list[bytes] = []

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs real I/O
        )
        @given(METHOD, PATH, QUERY, HEADERS, st.booleans())
        @example("GET", "/api/proxy/a/..;/x", "", [], False)
        @example("GET", "/api/proxy/.%2e%3b/x", "?q", [], True)
        @example("POST", "/api/proxy/%252e%252e/x", "", [], False)
        @example("GET", "/api/proxy/a;b/...;/c", "?..", [], False)
        def check(method: str, path: str, query: str, headers: list[tuple[str, str]], absolute: bool) -> None:
            self.tried += 1
            target = (path + query).encode()
            if absolute:
                target = f"http://127.0.0.1:{self.other_port}".encode() + target
            head = b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
            body = b"payload" if method in ("POST", "PUT", "PATCH") else b""
            request = (
                method.encode() + b" " + target + b" HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + head
                + b"Content-Length: %d\r\n\r\n" % len(body) + body
            )  # fmt: skip
            history.append(request)
            answer = exchange(self.port, request, timeout=8)
            status = status_of(answer)
            statuses[status] = statuses.get(status, 0) + 1
            self.assertNotEqual(status, 0, f"no answer (hang or drop); the last requests: {history[-4:]!r}")
            self.assertNotEqual(status, 500, answer)
            expected = expected_target(method, target.decode("ascii"))
            if b"x-upstream: yes" in answer.lower():
                self.assertIsNotNone(expected, (request, answer))
                assert expected is not None
                self.assertEqual(self.last_uri(), "/api" + expected[len("/api/proxy") :])
            else:
                self.assertIsNone(
                    expected, f"a target the policy keeps was not forwarded: {request!r} {answer!r}"
                )
                self.assertEqual(status, 400, (request, answer))

        check()
        counts = json.loads(get(f"http://127.0.0.1:{self.other_port}/api/__count")[2])
        self.assertEqual(counts, {}, "the other server was reached")
        self.assertIsNone(self.proxy.process.poll(), "the proxy died")
        print(
            f"\nproperties: {self.tried} generated requests, answers by status: {dict(sorted(statuses.items()))}"
        )
