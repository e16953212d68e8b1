"""
The wire on both sides, and nothing of forwarding.

Server side: L{ProxyChannel} and L{ProxySite} (request-head limits, the body
limit, early refusals, told to a L{RefusalListener}), HTTP/2 on TLS listeners
(ALPN; Twisted's C{H2Connection} with the proxy's head checks and stream
limit), and L{take_over} of a connection (WebSocket tunnels).

Upstream side: the pooled L{UpstreamClient}, one L{UpstreamConnection} per
socket, the llhttp response reader, the L{IResponse} it hands over, the
chunked coding, eager writes, and the endpoints that reach an upstream.  Header helpers shared by both sides.

May import: the standard library, Twisted, httptools, hyper-h2, and the top-level
kernel modules that import nothing of the package (C{_config}, C{_errors}).
Imports nothing of C{forward}, C{resilience}, C{idempotency} or C{ops}.
"""
