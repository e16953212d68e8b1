"""
The whole proxy path in memory: a GET read by the proxy's channel, forwarded
by the default configuration's proxy (health gate, retry loop, budget,
metrics, request id, access line) over its pooled upstream connection, the
upstream's answer fed back by hand and relayed to the client.  No sockets
and no other process, so the figure moves only with the proxy's own work:
CPU microseconds per request, best of a few rounds.

    python bench/path.py [N] [ROUNDS] [proxy options...]

Run it with another checkout's interpreter (its venv) to compare two
versions; C{PROFILE=FILE} writes a cProfile of the run to FILE.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sora2proxy._proxy import build_proxy
from sora2proxy._tap import Options
from sora2proxy.http._site import ProxySite

REQUEST = b"GET /api/proxy/small.json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
BODY = b'{"id":"video_1","status":"completed","progress":100,"url":"/v/1.mp4","size":4194304}\n'
ANSWER = (  # what nginx answers for bench/run.py's small.json
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n"
    b"Last-Modified: Mon, 30 Nov 2026 01:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "1-56"\r\nAccept-Ranges: bytes\r\n\r\n%s'
) % (len(BODY), BODY)


class Bench:
    """
    A proxy in the default configuration on a memory reactor, one client
    connection, and the upstream connections it opens.
    """

    def __init__(self, options: list[str]) -> None:
        parsed = Options()
        parsed.parseOptions(["--listen", "tcp:0", "--admin-listen", "none", "--upstream",
                             "http://127.0.0.1:9/api", "--access-log", os.devnull, *options])  # fmt: skip
        assert parsed.config is not None
        self.reactor = MemoryReactorClock()
        proxy = build_proxy(parsed.config, self.reactor)
        proxy.service.startService()
        site = ProxySite(proxy.resource, parsed.config, reactor=self.reactor, refusals=proxy.refusals)
        here, peer = IPv4Address("TCP", "127.0.0.1", 8080), IPv4Address("TCP", "127.0.0.1", 5555)
        self.client = StringTransport(hostAddress=here, peerAddress=peer)
        self.channel = site.buildProtocol(peer)
        self.channel.makeConnection(self.client)
        self.opened = 0
        self.upstream: Any = None

    def one(self) -> None:
        """
        One request and its answer.
        """
        self.channel.dataReceived(REQUEST)
        clients = self.reactor.tcpClients
        if len(clients) > self.opened:  # a new upstream connection (the first, or a replacement)
            self.opened = len(clients)
            self.upstream = clients[-1][2].buildProtocol(None)
            self.upstream.makeConnection(StringTransport())
        self.upstream.transport.clear()
        self.upstream.dataReceived(ANSWER)
        self.reactor.advance(0)

    def run(self, count: int) -> float:
        """
        @return: CPU seconds for C{count} requests.
        """
        self.client.clear()
        started = time.process_time()
        for _ in range(count):
            self.one()
        elapsed = time.process_time() - started
        answered = self.client.value().count(b"HTTP/1.1 200 OK\r\n")
        if answered != count:
            raise SystemExit(f"{answered} of {count} requests answered: {self.client.value()[:300]!r}")
        return elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    bench = Bench(sys.argv[3:])
    bench.run(200)  # warm up
    profile = os.environ.get("PROFILE")
    if profile:
        cProfile.runctx("bench.run(count)", globals(), {"bench": bench, "count": count}, profile)
        return
    best = min(bench.run(count) for _ in range(rounds))
    print(f"{best / count * 1e6:.1f} us per request (best of {rounds} x {count}; upstream connections {bench.opened})")


if __name__ == "__main__":
    main()
