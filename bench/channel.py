"""
The request channel alone, in memory: N pipelined requests fed through a
L{ProxySite}'s channel on a StringTransport, to a resource that answers at
once; microseconds per request (best of a few rounds).  No sockets, no
upstream: what reading a request and building its L{Request} costs.

    python bench/channel.py [N]
"""

from __future__ import annotations

import sys
import time

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from sora2proxy import ProxyConfig
from sora2proxy.http._site import ProxySite

GET = (
    b"GET /api/proxy/small.json?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk/4.2\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nX-Request-ID: abc123\r\n\r\n"
)
POST = (
    b"POST /api/proxy/v1/videos HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
    b"Content-Length: 27\r\nAuthorization: Bearer abcdef\r\n\r\n"
    b'{"prompt": "a cat", "n": 1}'
)


class Ok(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        return b"ok"


def per_request(request: bytes, count: int, rounds: int = 5) -> float:
    """
    @return: the best microseconds per request over C{rounds} runs.
    """
    best = float("inf")
    site = ProxySite(Ok(), ProxyConfig(), reactor=MemoryReactorClock())  # type: ignore[arg-type]
    for _ in range(rounds):
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        started = time.perf_counter()
        for _ in range(count // 100):
            channel.dataReceived(request * 100)
        elapsed = time.perf_counter() - started
        assert transport.value().count(b"HTTP/1.1 200 OK") == count // 100 * 100, transport.value()[:300]
        channel.connectionLost(None)
        best = min(best, elapsed)
    return best / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for name, request in (("GET, 6 headers", GET), ("POST, 27-byte body", POST)):
        print(f"{name}: {per_request(request, count):.1f} us per request ({count} pipelined, 100 per read)")


if __name__ == "__main__":
    main()
