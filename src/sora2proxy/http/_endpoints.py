"""
Where upstream connections go: TCP for C{http}, TLS over TCP for C{https}.
An IP-literal host is connected to directly (L{HostnameEndpoint} would first
resolve it in a thread and delay every refused connection); a name goes
through L{HostnameEndpoint} (happy eyeballs over IPv4 and IPv6).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer


@implementer(IPolicyForHTTPS)
class PrivateCAPolicy:
    """
    Verifies https upstreams against the CA certificates of one PEM file
    (C{--upstream-ca}) instead of the system's store.
    """

    def __init__(self, pem: bytes) -> None:
        marker = b"-----END CERTIFICATE-----"
        certificates = [
            Certificate.loadPEM(block + marker) for block in pem.split(marker) if b"-----BEGIN" in block
        ]
        self._trust = trustRootFromCertificates(certificates)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii").strip("[]"), trustRoot=self._trust)


def tls_policy(ca_file: str | None) -> IPolicyForHTTPS:
    """
    @return: the system's CA store by default, or the CAs of C{ca_file}.
    """
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca_file, "rb") as pem:
        return PrivateCAPolicy(pem.read())


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """
    Endpoints for upstream URLs.

    @param tls_policy: verifies HTTPS upstreams (the system's CA store by default).
    """

    def __init__(self, reactor: Any, tls_policy: IPolicyForHTTPS | None = None) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        literal = host.strip("[]")
        endpoint: IStreamClientEndpoint
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
        else:
            if address.version == 4:
                endpoint = TCP4ClientEndpoint(self._reactor, literal, uri.port)
            else:
                endpoint = TCP6ClientEndpoint(self._reactor, literal, uri.port)
        if uri.scheme == b"https":
            creator = self._tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint
