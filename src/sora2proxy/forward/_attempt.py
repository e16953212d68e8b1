"""
One upstream try: the target URL built from the raw request bytes, the
forwarded headers, a body that can be sent again from its start, and the
call to the HTTP client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import IO

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import CooperativeTask, Cooperator, TaskStopped
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Request
from zope.interface import implementer

from ..http._headers import (
    HOP_BY_HOP,
    HOST_KEY,
    REQUEST_ID,
    REQUEST_ID_KEY,
    SET_BY_CLIENT,
    VIA,
    VIA_10,
    VIA_H2,
    canonical,
    connection_named,
    forwarded_element,
)
from ..http._trace import TRACEPARENT, TRACESTATE, Trace

#: Bodies up to this size are written to the upstream in one go.
SMALL_BODY = 64 * 1024
CHUNK = 64 * 1024

#: Request headers not copied upstream (the client and the proxy set their own).
_NOT_COPIED = SET_BY_CLIENT | {REQUEST_ID}

#: The names (in L{Headers}' case) of the fields the proxy sets on a forwarded request.
_FOR, _PROTO = canonical(b"x-forwarded-for"), canonical(b"x-forwarded-proto")
_FORWARDED_HOST, _FORWARDED = canonical(b"x-forwarded-host"), canonical(b"forwarded")
_VIA, _TRACEPARENT, _TRACESTATE = canonical(b"via"), canonical(TRACEPARENT), canonical(TRACESTATE)
#: Request fields never copied upstream as the client sent them.
_NOT_FORWARDED = HOP_BY_HOP | _NOT_COPIED

#: The C{Via} element of each protocol received (RFC 9110 section 7.6.3).
_VIA_OF = {b"HTTP/2": VIA_H2, b"HTTP/1.0": VIA_10}

#: Methods whose empty body is still sent with C{Content-Length: 0}.
_BODY_EXPECTED = frozenset({b"POST", b"PUT", b"PATCH"})


@frozen
class Target:
    """
    Where a request goes: the raw path and query after the prefix.

    @ivar rest: the raw path after the prefix, starting with C{/} or empty.
    @ivar query: the raw query, C{?} included, or empty.
    """

    rest: bytes
    query: bytes

    def url(self, base: bytes) -> bytes:
        """
        @return: C{base} (origin and base path) plus the raw path and query.
        """
        return base + self.rest + self.query


def split_target(uri: bytes, prefix: bytes) -> Target | None:
    """
    Map a raw request target onto the upstream, keeping its bytes as sent.

    @param prefix: the public prefix without a trailing slash (C{b""} for C{/}).
    @return: L{None} when C{uri} is not under C{prefix}.
    """
    path, mark, query = uri.partition(b"?")
    if not path.startswith(b"/"):
        return None
    if path == prefix:
        rest = b""
    elif path.startswith(prefix + b"/"):
        rest = path[len(prefix) :]
    else:
        return None
    return Target(rest, mark + query)


@implementer(IBodyProducer)
class ReplayableBody:
    """
    A request body that each try sends from its start; the source file is
    never closed, so that a retry can send it again.

    @ivar whole_sends: how many times the whole body was handed to an
        upstream connection (once per try that got that far).
    """

    whole_sends = 0

    def __init__(self, source: IO[bytes], length: int, cooperator: Cooperator) -> None:
        self._source = source
        self.length = length
        self._cooperator = cooperator
        self._task: CooperativeTask[Generator[None, None, None]] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._source.seek(0)
        if self.length <= SMALL_BODY:
            consumer.write(self._source.read(self.length))
            self.whole_sends += 1
            return succeed(None)
        task = self._task = self._cooperator.cooperate(self._chunks(consumer))
        done: Deferred[None] = Deferred()

        def stopped(failure: Failure) -> None:
            # After stopProducing the HTTP client no longer waits for C{done}.
            failure.trap(TaskStopped)

        def sent(_: object) -> None:
            self.whole_sends += 1
            done.callback(None)

        task.whenDone().addCallbacks(sent, stopped)
        return done

    def _chunks(self, consumer: IConsumer) -> Generator[None, None, None]:
        left = self.length
        while left > 0:
            data = self._source.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            consumer.write(data)
            yield None

    def pauseProducing(self) -> None:
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TaskStopped):
                self._task.stop()


def body_length(request: Request) -> int:
    """
    @return: the size of the request's body, which twisted.web has read
        (to memory or a temporary file) before rendering.
    """
    content: IO[bytes] | None = getattr(request, "content", None)
    if content is None:
        return 0
    length: int = content.seek(0, 2)  # the new position: the end
    content.seek(0)
    return length


def body_of(request: Request, cooperator: Cooperator) -> ReplayableBody | None:
    """
    @return: the request's body as a replayable producer, or L{None} when it
        has none (and its method does not expect one).
    """
    content: IO[bytes] | None = getattr(request, "content", None)
    length = body_length(request)
    if content is None or (length == 0 and request.method not in _BODY_EXPECTED):
        return None
    return ReplayableBody(content, length, cooperator)


def forwarded_headers(
    request: Request,
    request_id: str,
    secure: bool,
    preserve_host: bool = False,
    allow_underscore: bool = False,
    trace: Trace | None = None,
) -> Headers:
    """
    The headers sent upstream: the client's end-to-end headers, in order,
    with C{X-Request-ID}, C{X-Forwarded-*}, C{Forwarded} and C{Via} set (the
    last three appended to what the client sent); C{Host} is the upstream's
    (set by the HTTP client from the URL) unless C{preserve_host}.  Names
    holding C{_} are left out unless C{allow_underscore} (a C{ProxySite}
    drops them already; this covers a proxy served from any other site).
    """
    source = request.requestHeaders
    named = connection_named(source)
    forwarded = Headers()
    fields = forwarded._rawHeaders  # by Headers' name (the client's are already), in order
    for name, values in source._rawHeaders.items():
        lower = name.lower()
        if lower in _NOT_FORWARDED or (named and lower in named) or (b"_" in lower and not allow_underscore):
            continue
        fields[name] = list(values)
    fields[REQUEST_ID_KEY] = [request_id.encode("ascii")]
    client_ip: str | None = getattr(request.getClientAddress(), "host", None)
    hosts = source._rawHeaders.get(HOST_KEY)
    host = hosts[-1] if hosts else None
    proto = b"https" if secure else b"http"
    if client_ip is not None:
        _append(fields, _FOR, client_ip.encode("ascii", "replace"))
    fields[_PROTO] = [proto]
    if host is not None:
        fields[_FORWARDED_HOST] = [host]
        if preserve_host:
            fields[HOST_KEY] = [host]
    _append(fields, _FORWARDED, forwarded_element(client_ip, host, proto))
    _append(fields, _VIA, _VIA_OF.get(request.clientproto, VIA))
    if trace is not None:  # the client's traceparent replaced; its tracestate kept only with a valid one
        fields[_TRACEPARENT] = [trace.traceparent]
        if not trace.continued:
            fields.pop(_TRACESTATE, None)
    return forwarded


def _append(fields: dict[bytes, list[bytes]], name: bytes, value: bytes) -> None:
    # One more element of a list-valued field, after what the client sent (one line).
    existing = fields.get(name)
    if existing:
        existing = [v for v in existing if v.strip(b" \t,")]  # empty elements dropped
    fields[name] = [b", ".join([*existing, value])] if existing else [value]
