"""
Header rules: the hop-by-hop set (RFC 9110 section 7.6.1), request ids, and
the headers a proxy adds to a forwarded request.

This module imports nothing of the package.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Sequence

from twisted.web.http_headers import Headers, _nameEncoder

REQUEST_ID = b"x-request-id"


#: C{canonical(name)}: C{name} as L{Headers} keys its values (Twisted's
#: Header-Case), an invalid name refused.  A field read on every request is
#: looked up by its key at once, without C{getRawHeaders}' per-call re-casing.
canonical: Callable[[bytes], bytes] = _nameEncoder.encode
#: The names C{canonical} has seen, mapped to their key (Twisted's bounded
#: cache): C{CANONICAL_CACHE.get(name) or canonical(name)} is C{canonical(name)}
#: without a Python call for a name seen before, as most are.
CANONICAL_CACHE: dict[bytes | str, bytes] = _nameEncoder._canonicalHeaderCache


#: The L{Headers} keys of the fields the proxy reads or sets on every request.
REQUEST_ID_KEY = canonical(REQUEST_ID)
HOST_KEY = canonical(b"host")
CONNECTION_KEY = canonical(b"connection")
VIA_KEY = canonical(b"via")

#: Headers that belong to one connection, never forwarded in either direction.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

#: Headers the HTTP client sets itself from the URL and the body; C{Expect}
#: was answered by the proxy, which has the whole body already.
SET_BY_CLIENT: frozenset[bytes] = frozenset({b"host", b"content-length", b"expect"})

#: How the proxy names itself in C{Via}.
VIA = b"1.1 sora2proxy"
#: ... on a request that reached it over HTTP/2 (RFC 9110 section 7.6.3: the protocol received).
VIA_H2 = b"2 sora2proxy"
#: ... over HTTP/1.0.
VIA_10 = b"1.0 sora2proxy"

_REQUEST_ID_SHAPE = re.compile(rb"\A[A-Za-z0-9._:@/+=-]{1,128}\Z")


#: C{Host} (RFC 9110 section 7.2): a reg-name or IPv4 address (RFC 3986
#: section 3.2.2), or an IPv6 literal in brackets, and an optional port.
_HOST = re.compile(
    rb"\A(?:(?P<name>(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)|\[(?P<ip6>[0-9A-Fa-f:.]+)\])"
    rb"(?::[0-9]{0,5})?\Z"
)
#: The common case, matched first: a name or IPv4 address and a port.
_PLAIN_HOST = re.compile(rb"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?")


#: C{plain_host(value)}: whether C{value} is a name or IPv4 address and a
#: port (true means a valid C{Host}; false, ask L{valid_host}).
plain_host: Callable[[bytes], object] = _PLAIN_HOST.fullmatch


def valid_host(value: bytes) -> bool:
    """
    @return: whether C{value} is a valid C{Host}: a host and an optional port,
        nothing else (no path, query, user info or whitespace).
    """
    if _PLAIN_HOST.fullmatch(value):
        return True
    match = _HOST.match(value)
    if match is None:
        return False
    ip6 = match.group("ip6")
    if ip6 is None:
        return True
    try:
        ipaddress.IPv6Address(ip6.decode("ascii"))
    except ValueError:
        return False
    return True


def new_request_id() -> str:
    """
    @return: a fresh random request id (128 bits, hex).
    """
    return os.urandom(16).hex()


def request_id_from(headers: Headers, new_id: Callable[[], str] = new_request_id) -> str:
    """
    @param new_id: makes a new request id (a C{RandomIds} pool on the hot path).
    @return: the client's C{X-Request-ID} when it is a sane token, else a new one.
    """
    sent = headers._rawHeaders.get(REQUEST_ID_KEY)
    if sent and _REQUEST_ID_SHAPE.match(sent[0]):
        return sent[0].decode("ascii")
    return new_id()


#: Header fields by lowercase name: the name as sent and the values in order.
Fields = dict[bytes, tuple[bytes, list[bytes]]]


def put_parsed(headers: Headers, name: bytes, values: list[bytes]) -> None:
    """
    Set C{name} to C{values} in C{headers}, as C{setRawHeaders} does, for
    values known to hold no CR or LF: parsed by llhttp or Twisted's request
    parser (which refuse them), or made by the proxy.  It skips Twisted's
    per-value line folding, the largest part of a header's cost on the hot
    path; the name is still checked and put in Twisted's Header-Case.
    """
    headers._rawHeaders[_nameEncoder.encode(name)] = values


def headers_of(fields: Fields) -> Headers:
    """
    @return: C{fields}, whose values hold no CR or LF, as L{Headers}.
    """
    headers = Headers()
    raw = headers._rawHeaders
    encode = _nameEncoder.encode
    for name, values in fields.values():
        raw[encode(name)] = list(values)
    return headers


def connection_named(headers: Headers) -> frozenset[bytes]:
    """
    @return: the header names that the C{Connection} header lists, lowercased.
    """
    values = headers._rawHeaders.get(CONNECTION_KEY)
    return listed_names(values) if values else _NONE


_NONE: frozenset[bytes] = frozenset()


def listed_names(values: Sequence[bytes]) -> frozenset[bytes]:
    """
    @return: the lowercased names listed in C{values} (of a C{Connection} header).
    """
    if not values:
        return _NONE
    if len(values) == 1 and b"," not in values[0]:  # one name (keep-alive, close, upgrade): no generator
        name = values[0].strip().lower()
        return frozenset((name,)) if name else _NONE
    return frozenset(t.strip().lower() for value in values for t in value.split(b",") if t.strip())


def append_via(headers: Headers) -> None:
    """
    Append the proxy to C{Via} (RFC 9110 section 7.6.3).
    """
    raw = headers._rawHeaders
    existing = raw.get(VIA_KEY)
    raw[VIA_KEY] = [b", ".join([*existing, VIA]) if existing else VIA]


#: RFC 9110 tchar: anything else (a port's ":" too, RFC 7239 section 6) is a quoted-string.
_FORWARDED_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _forwarded_value(value: bytes) -> bytes:
    if _FORWARDED_TOKEN.fullmatch(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwarded_element(client_ip: str | None, host: bytes | None, proto: bytes) -> bytes:
    """
    This hop's element of C{Forwarded} (RFC 7239): C{for}, C{host} and C{proto}
    (an IPv6 C{for} quoted in brackets), built as bytes.
    """
    element = b"proto=" + proto
    if host is not None:
        element = b"host=" + _forwarded_value(host) + b";" + element
    if client_ip is not None:
        node = client_ip.encode("latin-1")
        element = (b'for="[' + node + b']";' if ":" in client_ip else b"for=" + node + b";") + element
    return element
