"""
The upstream HTTP client: an L{IAgent} over pooled L{UpstreamConnection}s.

Each origin (scheme, host, port) keeps up to C{max_idle} idle connections,
the most recently used reused first; one that has been idle longer than
C{idle_timeout} is closed instead of reused, and a sweep closes the rest.
A request is written with its target exactly as given (Twisted's own
client re-parses it and drops an empty query), with C{Host} from the URL
unless the headers carry one.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from ._wire import UpstreamConnection

#: An http(s) URL: its origin (scheme and authority), and its target up to any fragment.
_URL = re.compile(rb"(https?://[^/?#]*)([^#]*)")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
#: Headers the client writes itself.
_OWN = frozenset({b"Content-Length", b"Transfer-Encoding", b"Connection"})
#: How many origins' parsed forms are kept (upstreams are few; any URL works).
_ORIGINS_KEPT = 64


@frozen
class Origin:
    """
    Where requests for one scheme, host and port go.

    @ivar uri: the origin parsed (to find its endpoint).
    @ivar host: the C{Host} header value for it.
    """

    uri: URI
    host: bytes


def origin_of(origin: bytes) -> Origin:
    """
    @param origin: C{scheme://authority}.
    """
    uri = URI.fromBytes(origin)
    default = {b"http": 80, b"https": 443}.get(uri.scheme)
    host = b"[%s]" % uri.host if b":" in uri.host else uri.host
    if uri.port != default:
        host = b"%s:%d" % (host, uri.port)
    return Origin(uri, host)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, client: UpstreamClient, key: bytes) -> None:
        self._client = client
        self._key = key

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return self._client._new_connection(self._key)


@implementer(IAgent)
class UpstreamClient:
    """
    Sends requests to upstreams over persistent connections.

    @param endpoints: where the connections to each origin go (TLS for https).
    @param max_idle: idle connections kept per origin.
    @param idle_timeout: seconds an idle connection is kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoints: IAgentEndpointFactory,
        max_idle: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self._clock = clock
        self._endpoints = endpoints
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._origins: dict[bytes, Origin] = {}
        self._idle: dict[bytes, list[UpstreamConnection]] = {}
        self._closing: dict[UpstreamConnection, Deferred[None]] = {}
        self._sweep: IDelayedCall | None = None

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        split = _URL.match(uri)
        if split is None:
            return fail(ValueError(f"not an http(s) URL: {uri[:80]!r}"))
        key, target = split.groups()
        if not target.startswith(b"/"):
            target = b"/" + target
        if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
            return fail(ValueError(f"invalid method or target: {method[:20]!r} {target[:80]!r}"))
        origin = self._origins.get(key)
        if origin is None:
            try:
                origin = origin_of(key)
            except Exception as error:
                return fail(ValueError(f"bad URL {uri[:80]!r}: {error}"))
            if len(self._origins) < _ORIGINS_KEPT:
                self._origins[key] = origin
        head = self._head(method, target, origin.host, headers, bodyProducer)
        connection = self._reuse(key)
        if connection is not None:
            return connection.send(head, bodyProducer, method)
        endpoint = self._endpoints.endpointForURI(origin.uri)
        connected: Deferred[UpstreamConnection] = endpoint.connect(_ConnectionFactory(self, key))
        return connected.addCallback(lambda fresh: fresh.send(head, bodyProducer, method))

    @staticmethod
    def _head(
        method: bytes, target: bytes, host: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> bytes:
        # One join: the request line, then each field line (Headers' own
        # names, Header-Case, read directly), then the framing.
        raw = {} if headers is None else headers._rawHeaders
        lines = [b"%s %s HTTP/1.1" % (method, target)]
        lines += [name + b": " + v for name, values in raw.items() if name not in _OWN for v in values]
        if b"Host" not in raw:
            lines.append(b"Host: " + host)
        if body is not None:
            if body.length is UNKNOWN_LENGTH:
                lines.append(b"Transfer-Encoding: chunked")
            else:
                lines.append(b"Content-Length: %d" % body.length)
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    def _new_connection(self, key: bytes) -> UpstreamConnection:
        return UpstreamConnection(partial(self._released, key), partial(self._lost, key))

    def _reuse(self, key: bytes) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = self._clock.seconds() - self._idle_timeout
        while idle:
            connection = idle.pop()
            if connection.connected and connection.idle_since >= oldest:
                return connection
            self._close(connection)
        return None

    def _released(self, key: bytes, connection: UpstreamConnection) -> None:
        if connection in self._closing:
            return
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if len(idle) >= self._max_idle:
            self._close(connection)
            return
        connection.idle_since = self._clock.seconds()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = self._clock.callLater(self._idle_timeout, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        oldest = self._clock.seconds() - self._idle_timeout
        for idle in self._idle.values():
            for connection in [c for c in idle if c.idle_since < oldest]:
                idle.remove(connection)
                self._close(connection)
        if any(self._idle.values()):
            self._sweep = self._clock.callLater(self._idle_timeout, self._swept)

    def _lost(self, key: bytes, connection: UpstreamConnection) -> None:
        idle = self._idle.get(key, [])
        if connection in idle:
            idle.remove(connection)
        closing = self._closing.pop(connection, None)
        if closing is not None:
            closing.callback(None)

    def _close(self, connection: UpstreamConnection) -> Deferred[None]:
        closing = self._closing.get(connection)
        if closing is None:
            if not connection.connected or connection.transport is None:
                return succeed(None)
            closing = self._closing[connection] = Deferred()
            connection.close()
        return closing

    def idle_connections(self) -> int:
        """
        @return: how many connections wait for a request now.
        """
        return sum(len(idle) for idle in self._idle.values())

    def close_idle(self) -> Deferred[None]:
        """
        Close every idle connection (on shutdown); connections in use are
        closed when their response ends.

        @return: fires when they are closed.
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self._max_idle = 0
        idle = [c for connections in self._idle.values() for c in connections]
        self._idle.clear()
        closed = gatherResults([self._close(c) for c in idle])
        return closed.addCallback(lambda _: None)
