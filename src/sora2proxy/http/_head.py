"""
Reading one client request head with llhttp (Node.js's strict HTTP/1.1
parser) through httptools' L{HttpRequestParser}: the same library as the
upstream reader (L{_reader}).

The channel finds where a head ends (its first blank line) and hands over
the whole head; L{HeadReader} feeds it to llhttp alone, so that the body is
never parsed here (the channel frames it) and one parser serves every
bodiless request of a connection.  On top of llhttp, what it lets through and
the proxy refuses: a version other than HTTP/1.0 or 1.1 (llhttp takes 0.9 and
2.0), more than one space between the parts of the request line, a
C{Transfer-Encoding} other than exactly C{chunked} (llhttp takes
C{gzip, chunked}), more than L{MAX_HEADERS} headers, and the C{Host} rules
(RFC 9112 section 3.2).  Header names holding C{_} are dropped unless
allowed, as nginx does.

This module imports nothing of the package but L{_headers} and L{_refusal}.
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from ._headers import CANONICAL_CACHE, canonical, plain_host, valid_host
from ._refusal import head_problem

#: Most header lines in one request.
MAX_HEADERS = 100

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class HeadRefused(Exception):
    """
    The head is refused: C{args} are the status (400 or 431) and the message.
    """

    status: int
    message: str

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class Head:
    """
    A request head as read: what the channel needs to build its request.

    @ivar headers: the fields as C{Headers._rawHeaders} keeps them (canonical
        names, values in order).
    @ivar length: the body's length, L{None} for a chunked body.
    @ivar upgrade: llhttp stopped at the head's end (an upgrade or a CONNECT).
    """

    __slots__ = ("headers", "length", "method", "target", "upgrade", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: dict[bytes, list[bytes]],
        length: int | None,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.length = length
        self.upgrade = upgrade


class HeadReader:
    """
    Reads the request heads of one connection.

    @ivar reusable: the parser may read the next head (the last one had no
        body and asked for no upgrade).
    """

    __slots__ = ("_allow_underscore", "_count", "_done", "_fields", "_parser", "_url")

    def __init__(self, allow_underscore: bool) -> None:
        self._allow_underscore = allow_underscore
        self._parser: HttpRequestParser | None = None
        self._fields: dict[bytes, list[bytes]] = {}
        self._url = b""
        self._count = 0
        self._done = False

    def read(self, head: bytes) -> Head:
        """
        @param head: a whole head, up to and with its blank line.
        @raise HeadRefused: the head is malformed or breaks a rule.
        """
        parser = self._parser
        if parser is None:
            parser = self._parser = HttpRequestParser(self)
        self._fields = {}
        self._url = b""
        self._count = 0
        self._done = False
        upgrade = False
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            upgrade = True
        except HttpParserError as error:
            self._parser = None
            if isinstance(error.__context__, HeadRefused):
                raise error.__context__ from None
            raise HeadRefused(400, head_problem(head, str(error))) from None
        return self._head(parser, head, upgrade)

    def _head(self, parser: HttpRequestParser, head: bytes, upgrade: bool) -> Head:
        if not self._done:  # a head ends at its first blank line: llhttp agrees
            self._parser = None
            raise HeadRefused(400, head_problem(head, "incomplete head"))
        version = _VERSIONS.get(parser.get_http_version())
        method = parser.get_method()
        url = self._url
        if version is None or head.find(b"\r\n") != len(method) + len(url) + 10:
            self._parser = None  # llhttp took a version or spaces HTTP/1.1 does not
            raise HeadRefused(400, head_problem(head, "unsupported request line"))
        fields = self._fields
        length: int | None = 0
        coding = fields.get(b"Transfer-Encoding")
        if coding is not None:
            if len(coding) != 1 or coding[0].lower() != b"chunked":
                self._parser = None
                raise HeadRefused(400, "The only transfer coding a request may use is chunked.")
            length = None
        else:
            sizes = fields.get(b"Content-Length")
            if sizes is not None:
                length = int(sizes[0])  # llhttp took one, of digits only
        hosts = fields.get(b"Host")
        # The common case, one plain host and port, passes at once.
        if hosts is None or len(hosts) != 1 or not plain_host(hosts[0]):
            problem = host_problem(hosts, version)
            if problem is not None:
                raise HeadRefused(400, problem)
        if length != 0 or upgrade:
            self._parser = None  # llhttp would read the body: the next head gets a new one
        return Head(method, url, version, fields, length, upgrade)

    # llhttp's callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_HEADERS:
            raise HeadRefused(431, f"The request has more than {MAX_HEADERS} headers.")
        if b"_" in name and not self._allow_underscore:
            return  # dropped, as nginx does: CGI and WSGI read X_A as X-A
        name = CANONICAL_CACHE.get(name) or canonical(name)
        self._fields.setdefault(name, []).append(value.rstrip(b" \t"))

    def on_headers_complete(self) -> None:
        self._done = True


def host_problem(hosts: list[bytes] | None, version: bytes) -> str | None:
    """
    @return: why a request's C{Host} headers are refused (RFC 9112 section
        3.2), or L{None}.
    """
    if hosts is None:
        if version == b"HTTP/1.1":
            return "An HTTP/1.1 request must carry a Host header."
        return None
    if len(hosts) > 1:
        return "The request carries more than one Host header."
    if hosts[0] and not valid_host(hosts[0]):
        return "The Host header must be a host name or address and an optional port, nothing else."
    return None
