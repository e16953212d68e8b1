"""
The proxy's HTTP server side: L{ProxySite} and L{ProxyRequest}, which refuse
a request body over C{--max-body} as soon as its length is known (from
C{Content-Length}, before reading it and before any C{100 Continue}; or while
a chunked body arrives), and keep Twisted's own access log quiet (the proxy
logs its own events).
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, _getContentFile, datetimeToString, toChunk
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site, version

from .._config import ProxyConfig
from .._errors import BODY_TOO_LARGE, body_too_large_message, raw_error, sees_internals
from ._channel import ProxyChannel
from ._date import HTTPDate
from ._h2 import NegotiatedChannel, ProxyH2Connection
from ._h2_heads import answer_request, tell_refused
from ._headers import canonical, request_id_from
from ._refusal import RefusalListener

#: The C{Server} header twisted.web sends.
SERVER: bytes = version
_log = Logger()
_SERVER, _DATE = canonical(b"server"), canonical(b"date")
_CONTENT_LENGTH, _TRANSFER_ENCODING = canonical(b"content-length"), canonical(b"transfer-encoding")
#: The body lengths twisted.web's _getContentFile keeps in memory: under this.
_IN_MEMORY = 100_000


class ProxyRequest(Request):
    """
    A request that refuses a body over the site's C{max_body}.

    It is built, sized, written and finished by lean versions of
    twisted.web's methods, doing in one call what the proxy's plain answers
    need (anything else goes to twisted.web's); twisted.web's L{Request}
    is their oracle in C{tests/test_lean_request.py}.
    """

    _rejected = False
    _received = 0
    _gone: list[Callable[[], object]] | None = None

    def __init__(self, channel: Any, queued: object = False, parsePOSTFormSubmission: object = False) -> None:
        # What twisted.web's Request.__init__s (http's, server's and
        # Componentized's) set, in one call.  A form body is forwarded as
        # bytes, never parsed into C{args} (work and memory a proxy does not
        # need, on bodies up to --max-body).
        self.notifications: list[Deferred[None]] = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self.received_cookies: dict[bytes, bytes] = {}
        self.responseHeaders = Headers()
        self.cookies: list[bytes] = []
        self.transport = channel.transport
        self.queued = queued
        self._parsePOSTFormSubmission = False
        self._adapterCache: dict[Any, Any] = {}

    def when_gone(self, gone: Callable[[], object]) -> None:
        """
        Call C{gone} if the client goes away before the answer is finished:
        what C{notifyFinish().addErrback(...)} tells, without a L{Deferred}
        made and fired for every request whose client stays.
        """
        if self._gone is None:
            self._gone = []
        self._gone.append(gone)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        gone, self._gone = self._gone, None
        if gone and not self.finished:
            for call in gone:
                try:
                    call()
                except Exception:
                    _log.failure("While telling that a client went away")

    def write(self, data: bytes) -> None:
        if (
            self.startedWriting
            or self.finished
            or self._disconnected
            or self._inFakeHead
            or self._encoder
            or self.defaultContentType is not None
            or self.lastModified is not None
            or self.etag is not None
            or self.cookies
        ):
            super().write(data)  # type: ignore[no-untyped-call]
            return
        # The first write of a plain answer (the proxy's own: no default
        # Content-Type, encoder, fake HEAD, Last-Modified, ETag or cookies):
        # what twisted.web's Request.write does then, without looking the
        # same fields up three times.
        self.startedWriting = 1
        headers, method, code = self.responseHeaders, self.method, self.code
        bodiless = method == b"HEAD" or code in NO_BODY_CODES
        if self.clientproto == b"HTTP/1.1" and not bodiless and not headers._rawHeaders.get(_CONTENT_LENGTH):
            headers._rawHeaders[_TRANSFER_ENCODING] = [b"chunked"]
            self.chunked = 1
        self.channel.writeHeaders(self.clientproto, b"%d" % code, self.code_message, headers)
        if bodiless:
            self.write = lambda data: None  # type: ignore[method-assign]
            return
        self.sentLength += len(data)
        if data:
            if self.chunked:
                self.channel.writeSequence(toChunk(data))
            else:
                self.channel.write(data)

    def _limit(self) -> ProxyConfig | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "config", None)

    def gotLength(self, length: int | None) -> None:
        site = getattr(self.channel, "site", None)
        config: ProxyConfig | None = getattr(site, "config", None)
        if config is not None and length is not None and length > config.max_body:
            # Answer at once: no 100 Continue, no reading of the body.
            self.requestHeaders.removeHeader(b"expect")
            self._reject(config)
            return
        # What server.Request.gotLength does, without the AttributeError it
        # raises and catches for a site that has no getContentFile.
        content_file = getattr(site, "getContentFile", None)
        if content_file is not None:
            self.content = content_file(length)
        elif length is not None and length < _IN_MEMORY:  # as _getContentFile chooses, without the call
            self.content = BytesIO()
        else:
            self.content = _getContentFile(length)

    def finish(self) -> None:
        self._gone = None  # answered: no one is told of a leaving client now (and no cycle is kept)
        if self._encoder or self._disconnected or self.finished or self.queued or self.producer:
            super().finish()  # type: ignore[no-untyped-call]
            return
        # What twisted.web's Request.finish and _cleanup do then, in one call.
        if not self.startedWriting:
            self.write(b"")
        channel = self.channel
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        factory = getattr(channel, "factory", None)
        if factory is not None:
            factory.log(self)
        self.finished = 1
        channel.requestDone(self)
        del self.channel
        content: Any = self.content
        if content is not None:
            try:  # noqa: SIM105 (no context manager made per request)
                content.close()
            except OSError:  # as twisted.web: a file closing may fail on win32
                pass
            del self.content
        for notification in self.notifications:
            notification.callback(None)
        self.notifications = []

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._received += len(data)
        config = self._limit()
        if config is not None and self._received > config.max_body:
            self._reject(config)
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        site: Any = getattr(self.channel, "site", None)
        resource = getattr(site, "resource", None)
        if not getattr(resource, "isLeaf", False):  # as _leaf_root, inline
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]
            return
        # What twisted.web's does, less what a proxy never reads: the query
        # and a form body are forwarded as bytes, never parsed into args.
        content: Any = self.content
        content.seek(0, 0)
        self.args = {}
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self._serve_leaf(site, resource)

    def process(self) -> None:
        site: Any = getattr(self.channel, "site", None)
        if not _leaf_root(site):  # OPTIONS * too: the proxy refuses it, as any asterisk-form
            super().process()  # type: ignore[no-untyped-call]
            return
        self._serve_leaf(site, site.resource)

    def _serve_leaf(self, site: Any, resource: Any) -> None:
        # A leaf at the root (the proxy's own resource): nothing to traverse,
        # and the default headers set without Twisted's per-value checks.
        self.site = site
        raw = self.responseHeaders._rawHeaders
        raw[_SERVER] = [SERVER]
        raw[_DATE] = [site.date.now() if isinstance(site, ProxySite) else datetimeToString()]
        self.prepath, self.postpath = [], []
        self.sitepath: list[bytes] = []
        try:
            self.render(resource)  # type: ignore[no-untyped-call]
        except BaseException:
            self.processingFailed(Failure())  # type: ignore[no-untyped-call]

    def _reject(self, config: ProxyConfig) -> None:
        self._rejected = True
        request_id = request_id_from(self.requestHeaders)
        raise_it = ", or raise the proxy's --max-body" if sees_internals(self, config.dev) else ""
        details = {
            "attempts": 0,
            "durationMs": 0,
            "suggestion": f"Send at most {config.max_body} bytes{raise_it}.",
            "requestId": request_id,
            "maxBody": config.max_body,
        }
        message = body_too_large_message(config.max_body)
        channel = self.channel
        assert channel is not None
        if channel.transport is None:  # an HTTP/2 stream: answered on it, the connection carries on
            answer_request(self, BODY_TOO_LARGE, message, details, request_id)
            tell_refused(channel, BODY_TOO_LARGE, message, request_id)
            return
        site = getattr(channel, "site", None)
        date = site.date.now() if isinstance(site, ProxySite) else None
        channel.transport.write(raw_error(BODY_TOO_LARGE, message, details, request_id, date))
        channel.loseConnection()
        if isinstance(channel, ProxyChannel):
            channel.tell_refused(BODY_TOO_LARGE, message, request_id)


def _leaf_root(site: Any) -> bool:
    """
    @return: whether C{site}'s root resource is a leaf (the proxy's own is).
    """
    return bool(getattr(getattr(site, "resource", None), "isLeaf", False))


class QuietSite(Site):
    """
    A site without Twisted's access log and factory start/stop lines.
    """

    noisy = False

    def __init__(self, resource: Any, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor)  # type: ignore[no-untyped-call]

    def log(self, request: Any) -> None:
        pass


class ProxySite(QuietSite):
    """
    The site that serves the proxy: its connections are L{ProxyChannel}s
    (request-head limits), its requests L{ProxyRequest}s (body limit), and
    idle connections close after C{config.idle_timeout}.  What either
    refuses is told to C{refusals}.

    @ivar config: the proxy's configuration.
    @ivar date: the C{Date} header of the proxy's own answers, formatted
        once a second on the site's reactor.
    """

    protocol = ProxyChannel  # type: ignore[assignment]
    requestFactory = ProxyRequest  # type: ignore[assignment]  # its own __init__, same calls

    def __init__(
        self,
        resource: Any,
        config: ProxyConfig,
        reactor: Any = None,
        refusals: RefusalListener | None = None,
    ) -> None:
        """
        @param refusals: told of each request refused before C{resource}
            saw it (a malformed head, a body over the limit): the access log
            and metrics of the proxy that C{resource} serves (its
            C{Proxy.refusals}).
        """
        super().__init__(resource, reactor=reactor)
        self.config = config
        self.refusals = refusals
        self.timeOut = config.idle_timeout or None
        self.date = HTTPDate(self.reactor)

    def reconfigure(self, config: ProxyConfig) -> None:
        """
        Use C{config} (a reload): its body limit for new requests, its head
        and idle timeouts and header rules for new connections.
        """
        self.config = config
        self.timeOut = config.idle_timeout or None

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        channel.header_timeout = self.config.header_timeout
        channel.allow_underscore_headers = self.config.allow_underscore_headers
        channel.on_refused = self.refusals
        channel.idle_clock = self.reactor
        # HTTP/1.1 stays on this channel; h2, if ALPN chooses it, is an HTTP/2 connection.
        return NegotiatedChannel(channel, self._h2_connection)

    def _h2_connection(self) -> ProxyH2Connection:
        config = self.config
        return ProxyH2Connection(self, config.h2_max_streams, config.max_body, self.refusals)
