"""
A differential test of the upstream response parser: hypothesis writes
upstream responses, valid and broken (framings, folds, odd whitespace,
control bytes), h11 reads each one as an independent oracle, and the proxy
(its resource, client, pool and parser, the upstream's bytes given to the
connection in memory on a Clock) answers a client.  Whenever the proxy relays
a response, its status and body are the oracle's; whenever the oracle
rejects the response, the client gets 502 (or, when only the end of the
body is missing, a body that fails).
"""

from __future__ import annotations

from typing import Any

import h11
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from sora2proxy import ProxyConfig
from sora2proxy.forward._resource import ProxyResource
from sora2proxy.http._client import UpstreamClient

from .helpers import parts_for


class _Upstream(StringTransport):
    """Once the request is written, gives the connection the answer, then ends it."""

    def __init__(self, clock: Clock, answer: bytes) -> None:
        super().__init__()
        self._clock = clock
        self._answer = answer
        self._answered = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self._answered:
            self._answered = True
            self._clock.callLater(0, self._send)

    def _send(self) -> None:
        self.protocol.dataReceived(self._answer)
        if not self.disconnecting:
            self.disconnecting = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.loseConnection()


@implementer(IAgentEndpointFactory, IStreamClientEndpoint)
class _Endpoints:
    def __init__(self, clock: Clock, answer: bytes) -> None:
        self._clock = clock
        self._answer = answer

    def endpointForURI(self, uri: Any) -> _Endpoints:
        return self

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = _Upstream(self._clock, self._answer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return succeed(protocol)


def oracle(raw: bytes) -> tuple[int, bytes] | str:
    """
    @return: h11's status and body for C{raw}, or why it rejects it
        (C{"truncated"} when only the end of the body is missing).
    """
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/x", headers=[("Host", "u")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(raw)
    connection.receive_data(b"")
    status = None
    body = b""
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return status, body
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return "incomplete"
    except h11.RemoteProtocolError as error:
        return "truncated" if status is not None and "peer closed" in str(error) else str(error)


#: h11's reason for refusing a Transfer-Encoding other than chunked.
_H11_CODINGS = "Only Transfer-Encoding: chunked is supported"

_FAULTS = [
    "version", "status", "space", "reason", "name", "colon", "value", "chunk", "chunk-end", "trailer",
    "short", "long", "te", "both", "fold", "dup", "huge", "eol", "interim", "after",
]  # fmt: skip


def _one(draw: Any, fault: str | None, name: str, valid: list[bytes], broken: list[bytes]) -> bytes:
    """A valid part, or (when C{fault} is C{name}) one that may be broken."""
    return draw(st.sampled_from(valid + broken if fault == name else valid))  # type: ignore[no-any-return]


@st.composite
def _chunked(draw: Any, body: bytes, fault: str | None) -> bytes:
    out = b""
    for start in range(0, len(body), 7):
        piece = body[start : start + 7]
        size = b"%x" % len(piece)
        size = _one(
            draw, fault, "chunk", [size, size.upper(), size + b";e=1"], [b" " + size, size + b" ", b"zz"]
        )
        out += size + b"\r\n" + piece + _one(draw, fault, "chunk-end", [b"\r\n"], [b"", b"\n", b"XX"])
    return (
        out
        + b"0\r\n"
        + _one(draw, fault, "trailer", [b"", b"T: 1\r\n"], [b"T 1\r\n", b"T: \x00\r\n"])
        + b"\r\n"
    )


@st.composite
def responses(draw: Any) -> bytes:
    """An upstream response: valid, or with one of its parts broken."""
    fault = draw(st.sampled_from([None] * len(_FAULTS) + _FAULTS))
    version = _one(
        draw, fault, "version", [b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"http/1.1", b"HTTP/2", b"HTTP/0.9"]
    )
    status = _one(
        draw,
        fault,
        "status",
        [b"200", b"201", b"204", b"304", b"404", b"500", b"299"],
        [b"099", b"2000", b"20x", b"101"],
    )
    space = _one(draw, fault, "space", [b" "], [b"", b"  ", b"\t"])
    reason = _one(
        draw,
        fault,
        "reason",
        [b"OK", b"", b"Not Found", b"a\tb", b"\x80\xff"],
        [b"\x00", b"\x01", b"\r", b"\x7f", b"\x0b", b"OK\rSet-Cookie: evil=1"],
    )
    headers = []
    for _ in range(draw(st.integers(0, 4))):
        name = _one(
            draw,
            fault,
            "name",
            [b"X-A", b"Content-Type", b"X-B", b"X_Under"],
            [b"Bad Name", b"", b"X-A ", b"\x00", b"X\x7f"],
        )
        colon = _one(draw, fault, "colon", [b": ", b":", b":  "], [b" : ", b" "])
        value = _one(
            draw,
            fault,
            "value",
            [b"v", b" v ", b"\tv", b"", b"\xe9t\xe9"],
            [b"a\x00b", b"a\x01b", b"a\x7fb", b"a\rb", b"a\r\n b", b"a\nb"],
        )
        headers.append(name + colon + value)
    body = draw(st.binary(max_size=30))
    framing = (
        fault
        if fault in ("short", "long", "te", "both", "fold", "dup", "huge")
        else draw(st.sampled_from(["length", "chunked", "close"]))
    )
    chunked = draw(_chunked(body, fault))
    wire = body
    if framing in ("length", "short", "long"):
        headers.append(
            b"Content-Length: %d" % max(0, len(body) + {"length": 0, "short": -3, "long": 3}[framing])
        )
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        wire = chunked
    elif framing == "te":
        headers.append(
            b"Transfer-Encoding: "
            + draw(st.sampled_from([b"gzip", b"gzip, chunked", b"chunked, chunked", b"Chunked"]))
        )
        wire = chunked
    elif framing == "both":
        headers += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        wire = chunked
    elif framing == "fold":
        headers.append(b"Transfer-Encoding: gzip\r\n chunked")
        wire = chunked
    elif framing == "dup":
        headers += [
            b"Content-Length: %d" % len(body),
            draw(st.sampled_from([b"Content-Length: %d" % len(body), b"Content-Length: 1"])),
        ]
    elif framing == "huge":
        headers.append(b"Content-Length: " + b"9" * draw(st.sampled_from([20, 5000])))
    lines = [version + space + status + b" " + reason, *headers]
    eol = [b"\r\n"] * len(lines)
    if fault == "eol":
        eol[draw(st.integers(0, len(lines) - 1))] = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n"]))
    head = b"".join(line + end for line, end in zip(lines, eol, strict=True)) + b"\r\n"
    interim = _one(
        draw,
        fault,
        "interim",
        [b"", b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"\r\n", b"HTTP/1.1 100 Continue\r\n"],
    )
    after = _one(draw, fault, "after", [b""], [b"HTTP/1.1 200 OK\r\n\r\nevil", b"\r\n", b"x"])
    return interim + head + wire + after


class OracleTests(SynchronousTestCase):
    def relay(self, raw: bytes) -> tuple[int, bytes | None, dict[str, Any] | None]:
        clock = Clock()
        config = ProxyConfig(upstream="http://backend.test:3101/api", attempts=1, health_path="")
        endpoints = _Endpoints(clock, raw)
        agent = UpstreamClient(clock, endpoints)
        resource = ProxyResource(parts_for(config, clock, agent, endpoints=endpoints))
        client = StubTreq(resource)
        responded = client.get("http://proxy.test/api/proxy/x")
        for _ in range(6):
            clock.advance(0)
            client.flush()
        failed: list[Failure] = []
        responded.addErrback(failed.append)
        if failed:  # the head was held back and the body failed: the client saw no answer
            self.assertIsInstance(failed[0].value, ResponseNeverReceived)
            return 0, None, None
        response = self.successResultOf(responded)
        content = client.content(response)
        for _ in range(6):
            clock.advance(0)
            client.flush()
        result = []
        content.addBoth(result.append)
        body = result[0] if result and isinstance(result[0], bytes) else None
        error = None
        if response.code == 502 and body is not None and body.startswith(b"{"):
            import json

            error = json.loads(body)
        return response.code, body, error

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(responses())
    @example(b"HTTP/1.1 204 OK\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
    @example(b"HTTP/1.1 304 OK\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
    @example(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    def test_proxy_agrees_with_h11(self, raw: bytes) -> None:
        """Whatever the upstream sends, the client gets h11's status and body, or a 502 when h11 rejects it."""
        expected = oracle(raw)
        if expected == _H11_CODINGS and raw.startswith(b"HTTP/1.1 304 "):
            # h11 refuses any coding but chunked even where no body follows.
            # RFC 9112 forbids Transfer-Encoding only in 1xx and 204 answers
            # (section 6.1), and a 304 has no body whatever its framing fields
            # say (section 6.3, rule 1): the client gets the 304, bodiless.
            expected = (304, b"")
        code, body, error = self.relay(raw)
        if error is not None:
            self.assertEqual(error["details"]["errorType"], "UPSTREAM_ERROR", raw)
            return  # the proxy refused it: allowed whether h11 accepts it or not
        if expected == "truncated":
            self.assertIsNone(body, raw)  # relayed, then the body fails
            return
        self.assertIsInstance(expected, tuple, repr((raw, expected, code, body)))
        self.assertEqual((code, body), expected, raw)
