"""
Writing without waiting for the reactor: Twisted queues every write and sends
it on the next reactor turn, after registering for and waiting on the
socket's writability (two C{epoll_ctl} calls and a poll per response).  When
nothing is queued on a plain TCP transport, L{send_now} hands the bytes to
the socket at once, as asyncio's transports do, and queues only what the
socket did not take; the transport then carries on as usual.

It reads a few attributes of Twisted's C{FileDescriptor} that are not
public; on any other transport (TLS, wrapped, a test's) or a Twisted without them it
is a plain C{transport.write} (C{tests/test_eager.py} checks both).

This module imports nothing of the package.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when nothing is queued.
    """
    if data and _idle_plain_tcp(transport):
        try:
            sent: int = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the queued write below meets the error and reports it as Twisted does
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idle_plain_tcp(transport: Any) -> Any:
    # A wrapper (TLS, policies) proxies attribute reads to the TCP transport
    # beneath it: only a TCP connection itself qualifies.  A true value when
    # it does (no bool() made of it).
    if not isinstance(transport, Connection):
        return False
    try:
        return (
            transport.connected
            and not (transport.disconnecting or transport._writeDisconnected or transport.TLS)
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
            and transport.socket is not None
        )
    except AttributeError:
        return False
