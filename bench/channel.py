"""
The request channel alone, in memory: N pipelined requests fed through a
L{ProxySite}'s channel on a StringTransport, to a resource that answers at
once; CPU microseconds per request (best of a few rounds).  No sockets, no
upstream: what reading a request and building its L{Request} costs.

    python bench/channel.py [N]

Run it with another checkout's interpreter (its venv) to compare channels.
"""

from __future__ import annotations

import sys
import time

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from sora2proxy import ProxyConfig
from sora2proxy.http._site import ProxyRequest, ProxySite

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


class Bare(ProxyRequest):
    """
    A request answered 204 as soon as it is read: no resource, no headers.
    """

    def process(self) -> None:
        self.setResponseCode(204)
        self.finish()


def per_request(request: bytes, count: int, rounds: int = 5, bare: bool = False, batch: int = 1) -> float:
    """
    @param bare: answer with L{Bare} (the channel's own share).
    @param batch: requests per read (pipelined).
    @return: the best microseconds per request over C{rounds} runs, or
        NaN if some request was not answered.
    """
    best = float("inf")
    site = ProxySite(Ok(), ProxyConfig(), reactor=MemoryReactorClock())  # type: ignore[arg-type]
    if bare:
        site.requestFactory = Bare
    for _ in range(rounds):
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        started = time.process_time()
        for _ in range(count // batch):
            channel.dataReceived(request * batch)
        elapsed = time.process_time() - started
        answered = transport.value().count(b"HTTP/1.1 204 " if bare else b"HTTP/1.1 200 OK")
        if answered != count // batch * batch:
            return float("nan")
        channel.connectionLost(None)
        best = min(best, elapsed)
    return best / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for name, request in (("GET, 6 headers", GET), ("POST, 27-byte body", POST)):
        for batch in (1, 100):
            for bare, how in ((False, "twisted.web"), (True, "channel only")):
                micros = per_request(request, count, bare=bare, batch=batch)
                print(f"{name}, {batch} per read, {how}: {micros:.1f} us per request")


if __name__ == "__main__":
    main()
