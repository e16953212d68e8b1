"""
L{take_over}: detach a request's connection from twisted.web and give it to
another protocol (a WebSocket tunnel), with every byte the client sent after
the request head.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocol, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import Request


def take_over(request: Request, protocol: IProtocol) -> ITransport:
    """
    Detach the client's connection from twisted.web and give it to
    C{protocol} (as Autobahn's WebSocketResource does).  The bytes the client
    sent after the request head, which C{HTTPChannel} already read (with the
    head, or while the request was handled), are delivered to C{protocol}
    first, in order.

    @return: the client's transport.
    """
    channel = request.channel
    assert channel is not None
    transport = channel.transport
    assert transport is not None
    channel.setTimeout(None)
    transport.unregisterProducer()  # type: ignore[attr-defined]
    take_early = getattr(channel, "take_early", None)
    if take_early is not None:  # a ProxyChannel: what it read and did not parse
        early = take_early()
    else:
        # Twisted's HTTPChannel: the line buffer (read with the head, not yet
        # looked at), after what it held for pipelining (read while the
        # request was handled): it reads neither again once they are cleared.
        early = b"".join(channel._dataBuffer) + channel.clearLineBuffer()
        channel._dataBuffer = []
    channel.transport = None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol  # TLS: the wrapper delivers to us
    else:
        transport.protocol = protocol  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    if early:
        protocol.dataReceived(early)
    return transport
