"""
Which C{Host} the admin port answers, against DNS rebinding: a page on
C{evil.example} whose name is re-pointed at the admin address is still
sent with C{Host: evil.example}, and gets 421 instead of the proxy's data.

Accepted: no C{Host} at all (no browser sends that), C{localhost}, a
loopback address (127.0.0.0/8, C{[::1]}), and the address the request came
in on (the admin endpoint's interface, or the host's own address when it
listens on all of them: a Kubernetes probe sends the pod's IP), each with or
without a port.  Names other than C{localhost} are refused: only a name can
be re-pointed by its owner.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from .._errors import reason_phrase

#: The status of a refused C{Host} (RFC 9110 section 15.5.20): this server
#: does not answer for that authority.
MISDIRECTED = 421


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_name(value: bytes) -> str | None:
    """
    The host of a C{Host} value (an IPv6 address without its brackets), or
    L{None} when it is not a host with an optional port.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
        if _address(name) is None:
            return None
    else:
        name, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    return name.lower()


def host_allowed(values: Sequence[bytes] | None, local_host: str | None) -> bool:
    """
    @param values: the request's C{Host} header values (L{None}: none sent).
    @param local_host: the address the request came in on, if an IP one.
    @return: whether the admin port may answer this C{Host}.
    """
    if values is None:
        return True
    if len(values) != 1:
        return False
    name = _host_name(values[0])
    if name is None:
        return False
    if name == "localhost":
        return True
    address = _address(name)
    if address is None:
        return False
    if address.is_loopback:
        return True
    return local_host is not None and address == _address(local_host)


@implementer(IResource)
class LocalHostsOnly:
    """
    Serves C{wrapped} (a leaf mounted as a site's root) only to requests
    whose C{Host} L{host_allowed}; others get 421 with a short JSON error.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        self._wrapped = wrapped

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the admin resource is a leaf")

    def render(self, request: Request) -> bytes | int:
        local = getattr(request.getHost(), "host", None)
        if host_allowed(request.requestHeaders.getRawHeaders(b"host"), local):
            result: bytes | int = self._wrapped.render(request)
            return result
        # The registry's phrase: Twisted's table lacks 421 ("Unknown Status").
        request.setResponseCode(MISDIRECTED, reason_phrase(MISDIRECTED))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {
            "error": "Misdirected Request",
            "message": "The admin port answers only Host localhost, a loopback address "
            "or the address it was reached at.",
        }
        return json.dumps(body).encode()
