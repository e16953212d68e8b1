"""
Relay an upstream response to the client: status and end-to-end headers, then
the body streamed as it arrives, with backpressure (a slow client pauses the
upstream read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from .._errors import reason_phrase
from ..http._h2_heads import abort_client
from ..http._headers import (
    CANONICAL_CACHE,
    HOP_BY_HOP,
    HOST_KEY,
    REQUEST_ID,
    REQUEST_ID_KEY,
    Fields,
    append_via,
    canonical,
    connection_named,
    listed_names,
)
from ..idempotency._store import StoredResponse


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """
    Receives the upstream body and writes it to the client.

    It is the producer registered with the client's request (a slow client
    pauses the upstream read through it), so that the client's connection
    going away reaches L{client_gone}'s decision and never stops the
    upstream read behind its back.

    @ivar done: called once with L{None} when the body ended normally, or
        with the L{Failure} that cut it short.
    """

    def __init__(
        self,
        request: Request,
        done: Callable[[Failure | None], None],
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self._request = request
        self._done = done
        self._on_data = on_data
        self._client_gone = False
        self._keep_reading = False
        self._producing: IPushProducer | None = None
        self._registered = False
        self._chunks = 0

    def connectionMade(self) -> None:
        if self._client_gone and not self._keep_reading:
            self.stop()
            return
        producer = self.transport
        assert producer is not None
        self._producing = producer  # type: ignore[assignment]

    def dataReceived(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)
        if self._client_gone:
            return
        if self._chunks and not self._registered and self._producing is not None:
            # From the second piece on, a slow client pauses the upstream read;
            # a body that arrives in one piece (most answers) never needs to.
            self._registered = True
            self._request.registerProducer(self, True)
        self._chunks += 1
        self._request.write(data)

    def client_gone(self, keep_reading: bool = False) -> None:
        """
        The client went away: stop reading from the upstream, or, with
        C{keep_reading} (its answer is stored for a replay), read the rest
        of the body without writing it anywhere.
        """
        self._client_gone = True
        self._keep_reading = keep_reading
        if not keep_reading:
            self.stop()
        elif self._producing is not None:
            self._producing.resumeProducing()  # a slow client may have paused it

    def stop(self) -> None:
        """
        Abandon the upstream response (its connection is closed).
        """
        if self._producing is not None:
            self._producing.stopProducing()

    # IPushProducer, as the client's request sees it
    def pauseProducing(self) -> None:
        if self._producing is not None and not self._client_gone:
            self._producing.pauseProducing()

    def resumeProducing(self) -> None:
        if self._producing is not None:
            self._producing.resumeProducing()

    def stopProducing(self) -> None:
        # The client's connection is closing: L{client_gone} follows and decides.
        pass

    def ended_whole(self) -> None:
        """
        The body ended whole: L{connectionLost} with L{ResponseDone}, for
        which an L{UpstreamResponse} makes no L{Failure}.
        """
        if self._client_gone:
            self.connectionLost(Failure(ResponseDone()))
            return
        self._producing = None
        self._finish()

    def _finish(self) -> None:
        if self._registered:
            self._request.unregisterProducer()
        self._request.finish()
        self._done(None)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        self._producing = None
        complete = isinstance(reason.value, ResponseDone | PotentialDataLoss)
        if self._client_gone:
            self._done(None if complete and self._keep_reading else reason)
            return
        if complete:
            self._finish()
            return
        if self._registered:
            self._request.unregisterProducer()
        # The upstream died mid-body: the client must see a cut transfer,
        # never a complete-looking one.
        abort_client(self._request)
        self._done(reason)


def rewrite_location(value: bytes, upstream_base: bytes, public_base: bytes, prefix: bytes) -> bytes:
    """
    Point a C{Location} or C{Content-Location} that names the upstream's own
    base URL at the proxy's public prefix instead (as nginx's
    C{proxy_redirect default} does); also an absolute path under the
    upstream's base path.  The scheme and host are compared in any letter
    case, and a scheme-relative reference (C{//host/...}) takes the
    upstream's scheme.  Anything else is kept as sent.

    @param upstream_base: the upstream's origin and base path (no trailing slash).
    @param public_base: the proxy's origin as the client used it (C{scheme://host}).
    @param prefix: the public prefix (no trailing slash).
    """
    named = _in_base_case(value, upstream_base)
    if _under(named, upstream_base):
        return public_base + prefix + named[len(upstream_base) :]
    if value.startswith(b"/") and not value.startswith(b"//"):
        base_path = b"/" + upstream_base.split(b"/", 3)[3] if upstream_base.count(b"/") >= 3 else b""
        if _under(value, base_path):
            return prefix + value[len(base_path) :] or b"/"
    return value


def _in_base_case(value: bytes, upstream_base: bytes) -> bytes:
    # value with its scheme and host spelled as in upstream_base when they
    # are the same in another case (or absent: //host/...); else value.
    scheme_end = upstream_base.find(b"//")
    origin_end = upstream_base.find(b"/", scheme_end + 2)
    origin = upstream_base if origin_end < 0 else upstream_base[:origin_end]
    if value.startswith(b"//"):
        value = upstream_base[:scheme_end] + value
    if value[: len(origin)].lower() == origin.lower():
        return origin + value[len(origin) :]
    return value


def _under(value: bytes, base: bytes) -> bool:
    if not value.startswith(base):
        return False
    rest = value[len(base) : len(base) + 1]
    return rest in (b"", b"/", b"?", b"#")


_CONTENT_LENGTH = canonical(b"content-length")
#: The response fields start_response looks at one by one; the others are copied.
_LOOKED_AT = HOP_BY_HOP | {b"content-length", b"location", b"content-location"}


def start_response(
    request: Request,
    response: IResponse,
    request_id: str,
    upstream_base: bytes = b"",
    prefix: bytes = b"",
    public: bytes | None = None,
) -> None:
    """
    Copy the upstream's status (with its registered reason phrase) and
    end-to-end headers onto the response, with C{Via} and redirects to the
    upstream pointed at the proxy.

    @param public: the proxy's origin as the client used it (L{public_base}),
        taken while the client was there: a request whose client left no
        longer knows that it was secure.
    """
    # The registry's phrase (Twisted's table lacks 422, 429...; an upstream on
    # Twisted sends "Unknown Status" for them); the upstream's for a code it lacks.
    request.setResponseCode(response.code, reason_phrase(response.code, response.phrase))
    headers = request.responseHeaders
    named, pairs = _fields_of(response)
    raw, encode, code = headers._rawHeaders, canonical, response.code  # values parsed: no CR or LF
    cased = CANONICAL_CACHE.get  # no encoder call for a name seen before
    for lower, (_, values) in pairs:
        if lower in _LOOKED_AT or (named and lower in named):
            if lower in HOP_BY_HOP or (named and lower in named):
                continue
            if lower == b"content-length":
                if code == 204:
                    # RFC 9110 section 8.6: a server MUST NOT send Content-Length in a
                    # 204.  A 304's (or a HEAD answer's) describes the resource's 200
                    # answer, which the same section allows: kept.
                    continue
            elif upstream_base:  # Location, Content-Location
                origin = public or public_base(request)
                values = [rewrite_location(v, upstream_base, origin, prefix) for v in values]
        raw[cased(lower) or encode(lower)] = list(values)
    length = response.length
    if isinstance(length, int) and response.code not in (204, 304) and request.method != b"HEAD":
        # The client gets the same framing (Content-Length is kept apart from the headers).
        raw[_CONTENT_LENGTH] = [b"%d" % length]
    append_via(headers)
    raw[REQUEST_ID_KEY] = [request_id.encode("ascii")]


def _fields_of(
    response: IResponse,
) -> tuple[frozenset[bytes], Iterable[tuple[bytes, tuple[bytes, Sequence[bytes]]]]]:
    # The names its Connection header lists, and its fields by lowercase name.
    fields: Fields | None = getattr(response, "fields", None)
    if fields is not None:  # an UpstreamResponse: its fields as parsed, no Headers built
        control: Fields = getattr(response, "connection_fields", {})
        return listed_names(control.get(b"connection", (b"", []))[1]), fields.items()
    named = connection_named(response.headers)
    return named, [(name.lower(), (name, values)) for name, values in response.headers.getAllRawHeaders()]


def public_base(request: Request, secure: bool | None = None) -> bytes:
    """
    @param secure: whether the request came over TLS, when already known.
    @return: the proxy's origin as the client of C{request} used it (C{scheme://host}).
    """
    if secure is None:
        secure = bool(request.isSecure())
    scheme = b"https" if secure else b"http"
    hosts = request.requestHeaders._rawHeaders.get(HOST_KEY)
    host = hosts[-1] if hosts else b"localhost"
    return scheme + b"://" + host


def write_replay(request: Request, stored: StoredResponse, request_id: str) -> None:
    """
    Answer with a stored response (an Idempotency-Key replay): the same
    status, headers (stored as the client first got them, C{Via} included)
    and body, marked C{Idempotent-Replayed: true}.
    """
    request.setResponseCode(stored.status, reason_phrase(stored.status, stored.phrase))
    headers = request.responseHeaders
    for name, values in stored.headers:
        if name.lower() not in HOP_BY_HOP and name.lower() != b"date":  # the replay's own Date stays
            headers.setRawHeaders(name, list(values))
    # RFC 9110 section 8.6, as in start_response: none in a 204 (even one
    # stored before that rule), a 304's own kept.
    if stored.status == 204:
        headers.removeHeader(b"content-length")
    elif stored.status != 304:
        headers.setRawHeaders(b"content-length", [b"%d" % len(stored.body)])
    headers.setRawHeaders(b"idempotent-replayed", [b"true"])
    headers.setRawHeaders(REQUEST_ID, [request_id.encode("ascii")])
    request.write(stored.body)
    request.finish()
