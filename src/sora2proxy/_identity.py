"""
Who a request comes from: a digest of the C{--identity-header} values
(C{Authorization}, C{Cookie} and C{X-Api-Key} by default), else of the
client's address.  It is computed once per request and shared by every
per-caller feature (the Idempotency-Key scope, the rate and concurrency limits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from attrs import field, frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ._config import DEFAULT_IDENTITY_HEADERS


@frozen
class Identity:
    """
    The caller of one request.

    @ivar digest: hex SHA-256 of what identified it; equal digests are one caller.
    @ivar by_address: whether no identity header was sent, so that the
        client's address stands for the caller.
    """

    digest: str
    by_address: bool
    credential: str = ""

    @property
    def strongest(self) -> str:
        """
        The digest of the first identity header sent, in C{--identity-header}
        order (its whole digest without any): what the rate and concurrency
        limits count by, so that extra headers (a changing cookie beside a
        token) never make a fresh caller.
        """
        return self.credential or self.digest


def _lowered(names: Iterable[str | bytes]) -> tuple[bytes, ...]:
    encoded = (name if isinstance(name, bytes) else name.strip().encode("ascii") for name in names)
    return tuple(dict.fromkeys(name.lower() for name in encoded))


def _host_of(peer: IAddress | None) -> bytes:
    if isinstance(peer, IPv4Address | IPv6Address):
        return peer.host.encode("ascii")
    return repr(peer).encode("utf-8", "replace")  # a UNIX socket: one caller per listening socket


@frozen
class IdentityRule:
    """
    How a request's L{Identity} is found.

    @ivar headers: the identity headers' names, lowercased, in a fixed order.
    """

    headers: tuple[bytes, ...] = field(default=DEFAULT_IDENTITY_HEADERS, converter=_lowered)

    def identify(self, headers: Headers, peer: IAddress | None) -> Identity:
        """
        @param headers: the request's headers.
        @param peer: the client's address (its host, never its port, counts).
        @return: the caller.  Each header's name goes into the digest with
            its values, length-prefixed, so that values in different
            headers never collide.
        """
        h = hashlib.sha256()
        sent = False
        credential = ""
        for name in self.headers:
            for value in headers.getRawHeaders(name, []):
                sent = True
                h.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
            if sent and not credential:
                credential = h.hexdigest()  # the first header's values alone
        if not sent:
            host = _host_of(peer)
            h.update(b"peer %d:%s" % (len(host), host))
        return Identity(h.hexdigest(), not sent, credential)

    def of(self, request: Request) -> Identity:
        """
        The caller of C{request}: its identity headers, else its TCP peer.
        """
        return self.identify(request.requestHeaders, request.getClientAddress())


__all__ = ["DEFAULT_IDENTITY_HEADERS", "Identity", "IdentityRule"]
