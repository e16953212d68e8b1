"""
The forwarding of one request: the proxy's twisted.web resource, the
request-target policy, the forwarded headers, the relay of an answer back to
the client, the proxy's own answers and access line, the words of its
errors, and the WebSocket tunnel.

May import: C{resilience}, C{idempotency}, C{http}, the standard library,
Twisted, and the kernel modules (C{_config}, C{_errors}, C{_identity}).
Imports nothing of C{ops}: metrics, status and access lines are reached
through the L{typing.Protocol}s it declares.
"""
