"""
The request channel's and request's own lean versions of twisted.web's
methods (the response head, TLS, building and finishing a request, the idle
timer) do what twisted.web's do: twisted.web is the oracle, on generated
input where the input varies.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import TimeoutMixin
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from sora2proxy.http._channel import ProxyChannel
from sora2proxy.http._head import host_problem
from sora2proxy.http._headers import (
    _HOST,
    CANONICAL_CACHE,
    canonical,
    forwarded_element,
    listed_names,
    plain_host,
    valid_host,
)
from sora2proxy.http._idle import IdleTimer
from sora2proxy.http._site import ProxyRequest

from .helpers import RecordingChannel

_NAMES = st.sampled_from([b"Content-Type", b"Set-Cookie", b"X-A", b"Server", b"Date", b"Content-Length"])
_VALUES = st.lists(
    st.binary(min_size=0, max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v), max_size=3
)
_FIELDS = st.dictionaries(_NAMES, _VALUES, max_size=6)
_STATUS = st.tuples(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"200", b"204", b"404", b"502"]),
    st.sampled_from([b"OK", b"", b"Bad Gateway"]),
)


def _head_written(
    channel: Any, status: tuple[bytes, bytes, bytes], fields: dict[bytes, list[bytes]]
) -> bytes:
    transport = StringTransport()
    channel.transport = transport
    headers = Headers()
    headers._rawHeaders = {name: list(values) for name, values in fields.items()}
    channel.writeHeaders(*status, headers)
    channel.write(b"body")
    return transport.value()


class ResponseHeadTests(SynchronousTestCase):
    """
    L{ProxyChannel.writeHeaders} sends the head twisted.web's
    C{HTTPChannel.writeHeaders} sends (the oracle), with the first body bytes.
    """

    @settings(max_examples=300, deadline=None)
    @given(_STATUS, _FIELDS)
    def test_same_head_as_twisted(
        self, status: tuple[bytes, bytes, bytes], fields: dict[bytes, list[bytes]]
    ) -> None:
        """Any status line and fields (none, empty, repeated) make the bytes twisted.web writes."""
        ours = _head_written(ProxyChannel(), status, fields)
        theirs = _head_written(HTTPChannel(), status, fields)
        self.assertEqual(ours, theirs)

    def test_known_head(self) -> None:
        """A head with a repeated field is written as the client reads it, one line per value."""
        fields = {b"Set-Cookie": [b"a=1", b"b=2"], b"Content-Length": [b"4"]}
        self.assertEqual(
            _head_written(ProxyChannel(), (b"HTTP/1.1", b"200", b"OK"), fields),
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 4\r\n\r\nbody",
        )


@implementer(ISSLTransport)
class _TLSTransport(StringTransport):
    """A transport that says it is TLS."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _Counted(StringTransport):
    """A transport that counts how often it is adapted to an interface."""

    adapted = 0

    def __conform__(self, interface: Any) -> None:
        if interface is ISSLTransport:
            self.adapted += 1


class SecureTests(SynchronousTestCase):
    """
    L{ProxyChannel.isSecure} answers as C{HTTPChannel.isSecure} does (the
    oracle), and adapts the transport once per connection.
    """

    def test_same_answer_as_twisted(self) -> None:
        """A TLS transport is secure and a plain one is not, for the channel and for its requests."""
        for kind, secure in ((_TLSTransport, True), (StringTransport, False)):
            for factory in (ProxyChannel, HTTPChannel):
                channel, transport = factory(), kind()
                channel.makeConnection(transport)
                self.assertIs(channel.isSecure(), secure, (factory, transport))
                self.assertIs(channel.isSecure(), secure, (factory, transport))

    def test_adapted_once(self) -> None:
        """Asked many times, the channel adapts its transport to ISSLTransport once."""
        transport = _Counted()
        channel = ProxyChannel()
        channel.makeConnection(transport)
        for _ in range(5):
            self.assertFalse(channel.isSecure())
        self.assertEqual(transport.adapted, 1)


class _Channel(RecordingChannel):
    """A recording channel that is also its own factory: it logs and ends requests, as a site's channel."""

    def __init__(self, site: Any = None) -> None:
        super().__init__(site)
        self.factory = self

    def log(self, request: Any) -> None:
        self.calls.append(("log", request.finished))

    def requestDone(self, request: Any) -> None:
        self.calls.append(("done", request.finished))


def _built(factory: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    channel = _Channel()
    request = factory(channel, *args, **kwargs)
    built = dict(vars(request))
    assert built.pop("channel") is channel and built.pop("transport") is channel.transport
    return built


def _finished(factory: Any, method: bytes, proto: bytes, chunks: list[bytes], watchers: int) -> Any:
    channel = _Channel()
    request = factory(channel, 0, parsePOSTFormSubmission=False)
    request.method, request.clientproto, request.defaultContentType = method, proto, None
    request.gotLength(0)
    content = request.content
    told: list[Any] = []
    for _ in range(watchers):
        request.notifyFinish().addBoth(told.append)
    for chunk in chunks:
        request.write(chunk)
    request.finish()
    left = sorted(name for name in ("channel", "content") if name in vars(request))
    return channel.calls, told, content.closed, left, request.finished, request.notifications


class RequestTests(SynchronousTestCase):
    """
    L{ProxyRequest}'s own C{__init__}, C{gotLength} and C{finish} leave a
    request as twisted.web's L{Request} (the oracle) does, less the form
    parsing a proxy never does.
    """

    def test_built_as_twisted_builds(self) -> None:
        """A new request has the attributes, with the same values, that twisted.web gives it."""
        for args in ((), (0,), (1,)):
            for kwargs in ({}, {"parsePOSTFormSubmission": False}):
                ours = _built(ProxyRequest, *args, **kwargs)
                theirs = _built(Request, *args, **{"parsePOSTFormSubmission": False, **kwargs})
                self.assertEqual(set(ours), set(theirs))
                for name, value in theirs.items():
                    self.assertEqual(ours[name], value, name)

    def test_content_file_as_twisted_chooses(self) -> None:
        """A body of known small length goes to memory, a large or chunked one to a file, as twisted.web does."""
        for length in (None, 0, 10, 99_999, 100_000):
            kinds = []
            for factory in (ProxyRequest, Request):
                request = factory(_Channel(site=object()), parsePOSTFormSubmission=False)
                request.gotLength(length)
                kinds.append(type(request.content))
                request.content.close()
            self.assertEqual(kinds[0], kinds[1], length)

    def test_site_content_file_used(self) -> None:
        """A site with its own getContentFile gives each request its body file, as twisted.web asks it."""

        class Site:
            def getContentFile(self, length: int | None) -> Any:
                return ("file", length)

        for factory in (ProxyRequest, Request):
            request = factory(_Channel(site=Site()), parsePOSTFormSubmission=False)
            request.gotLength(7)
            self.assertEqual(request.content, ("file", 7))

    def test_finished_as_twisted_finishes(self) -> None:
        """Finishing writes, logs, tells the channel and the watchers, and closes the body as twisted.web does."""
        for method in (b"GET", b"HEAD"):
            for proto in (b"HTTP/1.1", b"HTTP/1.0"):
                for chunks in ([], [b""], [b"abc", b"de"]):
                    for watchers in (0, 2):
                        ours = _finished(ProxyRequest, method, proto, chunks, watchers)
                        theirs = _finished(Request, method, proto, chunks, watchers)
                        self.assertEqual(ours, theirs, (method, proto, chunks, watchers))
        calls, told, closed, left, finished, _ = _finished(ProxyRequest, b"GET", b"HTTP/1.1", [b"ab"], 1)
        self.assertEqual(
            calls[1:], [("body", b"2\r\nab\r\n"), ("body", b"0\r\n\r\n"), ("log", 0), ("done", 1)]
        )
        self.assertEqual((told, closed, left, finished), ([None], True, [], 1))

    def test_finish_twice_warns(self) -> None:
        """A second finish warns and does nothing more, as twisted.web's does."""
        channel = _Channel()
        request = ProxyRequest(channel, 0)
        request.gotLength(0)
        request.finish()
        done = len(channel.calls)
        request.finish()
        self.assertEqual(len(self.flushWarnings()), 1)
        self.assertEqual(len(channel.calls), done)


class _Timed:
    """Records when its idle timeout fires, on its clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.callLater = clock.callLater
        self.fired: list[float] = []

    def timeoutConnection(self) -> None:
        self.fired.append(self.clock.seconds())


class _Theirs(_Timed, TimeoutMixin):
    """Twisted's idle timer (the oracle)."""


class _Ours(_Timed, IdleTimer):
    """The lazily re-armed idle timer."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.idle_clock = clock


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.5, 4.9, 5.0, 7.0, 1e-9])),
        st.tuples(st.just("reset"), st.just(0.0)),
        st.tuples(st.just("set"), st.sampled_from([None, 0.1, 1.0, 5.0, 10.0])),
    ),
    max_size=30,
)


def _fired(
    factory: Any, first: float | None, steps: list[tuple[str, Any]]
) -> tuple[list[float], list[float]]:
    clock = Clock()
    clock.advance(0.7)
    timed = factory(clock)
    timed.setTimeout(first)
    for step, value in steps:
        if step == "advance":
            clock.advance(value)
        elif step == "reset":
            timed.resetTimeout()
        else:
            timed.setTimeout(value)
    clock.advance(100)
    return timed.fired, [call.getTime() for call in clock.getDelayedCalls()]


class IdleTimerTests(SynchronousTestCase):
    """
    L{IdleTimer} times out at the moments Twisted's L{TimeoutMixin} (the
    oracle) does, on a Clock.
    """

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from([None, 0.3, 5.0]), _STEPS)
    def test_fires_when_twisted_fires(self, first: float | None, steps: list[tuple[str, Any]]) -> None:
        """Any reads, timeout changes and waits time out at the same moments, and leave no call behind."""
        self.assertEqual(_fired(_Ours, first, steps), _fired(_Theirs, first, steps))

    def test_activity_moves_the_deadline(self) -> None:
        """Activity 3 s into a 5 s timeout moves it to 8 s, with one call pending, not moved on each read."""
        clock = Clock()
        timed = _Ours(clock)
        timed.setTimeout(5.0)
        clock.advance(3)
        timed.resetTimeout()
        timed.resetTimeout()
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [5.0])
        clock.advance(4.9)
        self.assertEqual(timed.fired, [])
        clock.advance(0.1)
        self.assertEqual(timed.fired, [8.0])

    def test_without_a_clock_twisted_times(self) -> None:
        """A timer without idle_clock is TimeoutMixin's own, on the protocol's callLater."""
        clock = Clock()
        timed = _Ours(clock)
        timed.idle_clock = None
        timed.setTimeout(5.0)
        clock.advance(3)
        timed.resetTimeout()
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [8.0])
        clock.advance(5)
        self.assertEqual(timed.fired, [8.0])


_HOSTS = st.one_of(
    st.binary(max_size=12),
    st.from_regex(rb"\A[A-Za-z0-9.\-_~%\[\]:@/ ]{0,12}(:[0-9]{0,6})?\Z"),
)


class HeadShortcutTests(SynchronousTestCase):
    """
    The head reader's shortcuts give what the full checks give: a plain
    C{Host} is one L{host_problem} accepts, and a name's cached key is
    C{canonical}'s (the oracles).
    """

    @settings(max_examples=500, deadline=None)
    @given(_HOSTS)
    def test_plain_host_is_valid(self, value: bytes) -> None:
        """A Host the shortcut passes is one the full Host rules pass, for HTTP/1.1 and 1.0."""
        if plain_host(value):
            self.assertIsNotNone(_HOST.match(value), value)  # the full rule, without the shortcut
            self.assertTrue(valid_host(value), value)
            self.assertIsNone(host_problem([value], b"HTTP/1.1"))
            self.assertIsNone(host_problem([value], b"HTTP/1.0"))

    def test_plain_hosts(self) -> None:
        """Names, IPv4 addresses and ports pass at once; anything else goes to the full rules."""
        for value in (b"example.com", b"127.0.0.1:8080", b"a-b.c:1"):
            self.assertTrue(plain_host(value), value)
        for value in (b"", b"[::1]:80", b"a b", b"a/b", b"u@h", b"h:123456", b"h_1"):
            self.assertFalse(plain_host(value), value)

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}\Z"))
    def test_cached_key_is_canonical(self, name: bytes) -> None:
        """A header name's key from the cache, once seen, is the one canonical() makes."""
        key = canonical(name)
        self.assertEqual(CANONICAL_CACHE.get(name) or canonical(name), key)
        self.assertEqual(CANONICAL_CACHE[name], key)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from([b"close", b" Keep-Alive ", b"", b" ", b"a, b", b",", b"Upgrade", b"x,"]),
            max_size=3,
        )
    )
    def test_listed_names_as_the_general_rule(self, values: list[bytes]) -> None:
        """The names a Connection header lists are the same with or without the one-name shortcut."""
        general = frozenset(t.strip().lower() for value in values for t in value.split(b",") if t.strip())
        self.assertEqual(listed_names(values), general)


def _forwarded_before(client_ip: str | None, host: bytes | None, proto: bytes) -> bytes:
    """The Forwarded element as it was built before it was built as bytes (the reference)."""
    token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    parts = []
    if client_ip is not None:
        parts.append("for=" + (f'"[{client_ip}]"' if ":" in client_ip else client_ip))
    if host is not None:
        text = host.decode("latin-1")
        quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append("host=" + (text if token.fullmatch(text) else quoted))
    parts.append(f"proto={proto.decode('ascii')}")
    return ";".join(parts).encode("latin-1")


class ForwardedTests(SynchronousTestCase):
    """
    L{forwarded_element}, built as bytes, makes the element the string
    version made (the reference), and the one RFC 7239 shows.
    """

    @settings(max_examples=400, deadline=None)
    @given(
        st.one_of(st.none(), st.ip_addresses().map(str)),
        st.one_of(
            st.none(), st.binary(max_size=16), st.sampled_from([b"h.example:8080", b'a"b\\c', b"h.example"])
        ),
        st.sampled_from([b"http", b"https"]),
    )
    def test_same_element(self, client_ip: str | None, host: bytes | None, proto: bytes) -> None:
        """Any client address, Host bytes and scheme give the element the reference gives."""
        self.assertEqual(forwarded_element(client_ip, host, proto), _forwarded_before(client_ip, host, proto))

    def test_known_elements(self) -> None:
        """IPv6 in quoted brackets, a Host with a port quoted, a plain name as a token."""
        self.assertEqual(
            forwarded_element("2001:db8::1", b"h.example:8080", b"https"),
            b'for="[2001:db8::1]";host="h.example:8080";proto=https',
        )
        self.assertEqual(
            forwarded_element("192.0.2.1", b"h.example", b"http"), b"for=192.0.2.1;host=h.example;proto=http"
        )
        self.assertEqual(forwarded_element(None, None, b"http"), b"proto=http")


def _first_write(factory: Any, feature: str) -> Any:
    channel = _Channel()
    request = factory(channel, 0, parsePOSTFormSubmission=False)
    request.method, request.clientproto = b"GET", b"HTTP/1.1"
    if feature != "default type":
        request.defaultContentType = None
    if feature == "last modified":
        request.lastModified = 0
    elif feature == "etag":
        request.etag = b'"1"'
    elif feature == "cookie":
        request.addCookie(b"a", b"1")
    request.write(b"abc")
    request.write(b"de")
    return channel.calls


class FirstWriteFeatureTests(SynchronousTestCase):
    """
    An answer that is not plain (a default Content-Type, Last-Modified, an
    ETag, a cookie) is written by twisted.web's own C{write}: the same
    bytes as twisted.web's L{Request} (the oracle).
    """

    def test_each_feature_as_twisted(self) -> None:
        """Each of them puts its header in the head, as twisted.web does."""
        for feature in ("default type", "last modified", "etag", "cookie"):
            ours, theirs = _first_write(ProxyRequest, feature), _first_write(Request, feature)
            self.assertEqual(ours, theirs, feature)
            self.assertEqual(len(ours[0][4]), 2, feature)  # the feature's header and chunked
