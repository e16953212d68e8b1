"""
The whole proxy path in memory: a GET read by the proxy's channel, forwarded
by the default configuration's proxy (health gate, retry loop, budget,
metrics, request id, access line) over its pooled upstream connection, the
upstream's answer fed back by hand and relayed to the client.  No sockets
and no other process, so the figure moves only with the proxy's own work:
CPU microseconds per request, best of a few rounds.

    python bench/path.py [N] [ROUNDS] [proxy options...]

C{CONCURRENCY=64} keeps 64 requests in flight (64 client connections, each
request answered once all 64 are with the upstream), as wrk does at 64
connections: more live objects, for the garbage collector too.  C{GCX=freeze}
(C{gc.freeze()} after the warm-up) or C{GCX=off} measures the collector's share.

Run it with another checkout's interpreter (its venv) to compare two
versions; C{PROFILE=FILE} writes a cProfile of the run to FILE.
"""

from __future__ import annotations

import cProfile
import gc
import heapq
import os
import sys
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.testing import MemoryReactor, StringTransport

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


class HeapReactor(MemoryReactor):
    """
    A memory reactor whose clock keeps its calls in a heap, as a real
    reactor does (Twisted's test C{Clock} sorts them all at every
    C{callLater}, which would dominate with many requests in flight).
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._calls: list[tuple[float, int, DelayedCall]] = []
        self._added = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> DelayedCall:
        call = DelayedCall(self.now + delay, f, args, kw, lambda c: None, self._push, self.seconds)
        self._push(call)
        return call

    def _push(self, call: DelayedCall) -> None:
        self._added += 1
        heapq.heappush(self._calls, (call.time, self._added, call))

    def advance(self, amount: float) -> None:
        self.now += amount
        while self._calls and self._calls[0][0] <= self.now:
            when, _, call = heapq.heappop(self._calls)
            if call.cancelled or call.called or when != call.time:
                continue  # cancelled, or moved (pushed again at its new time)
            call.called = 1
            call.func(*call.args, **call.kw)

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [call for _, _, call in self._calls if call.active()]


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
        self.reactor = HeapReactor()
        proxy = build_proxy(parsed.config, self.reactor)
        proxy.service.startService()
        site = ProxySite(proxy.resource, parsed.config, reactor=self.reactor, refusals=proxy.refusals)
        here, peer = IPv4Address("TCP", "127.0.0.1", 8080), IPv4Address("TCP", "127.0.0.1", 5555)
        self.clients, self.channels = [], []
        for _ in range(int(os.environ.get("CONCURRENCY", "1"))):
            self.clients.append(StringTransport(hostAddress=here, peerAddress=peer))
            self.channels.append(site.buildProtocol(peer))
            self.channels[-1].makeConnection(self.clients[-1])
        self.client, self.channel = self.clients[0], self.channels[0]
        self.opened = 0
        self.upstream: Any = None
        self.upstreams: list[Any] = []

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

    def many(self) -> None:
        """
        One request on each client connection, all sent before any is answered.
        """
        for channel in self.channels:
            channel.dataReceived(REQUEST)
        clients = self.reactor.tcpClients
        while len(clients) > len(self.upstreams):  # new upstream connections
            self.upstreams.append(clients[len(self.upstreams)][2].buildProtocol(None))
            self.upstreams[-1].makeConnection(StringTransport())
        for upstream in self.upstreams:
            if upstream.transport.value():  # a request is waiting for its answer
                upstream.transport.clear()
                upstream.dataReceived(ANSWER)
        self.reactor.advance(0)

    def run(self, count: int) -> float:
        """
        @return: CPU seconds for C{count} requests.
        """
        for client in self.clients:
            client.clear()
        concurrent = len(self.channels)
        started = time.process_time()
        for _ in range(count // concurrent):
            if concurrent == 1:
                self.one()
            else:
                self.many()
        elapsed = time.process_time() - started
        answered = sum(client.value().count(b"HTTP/1.1 200 OK\r\n") for client in self.clients)
        if answered != count // concurrent * concurrent:
            raise SystemExit(f"{answered} of {count} requests answered: {self.client.value()[:300]!r}")
        return elapsed / (count // concurrent * concurrent) * count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    bench = Bench(sys.argv[3:])
    bench.run(200)  # warm up
    if os.environ.get("GCX") == "freeze":
        gc.freeze()
    elif os.environ.get("GCX") == "off":
        gc.disable()
    profile = os.environ.get("PROFILE")
    if profile:
        cProfile.runctx("bench.run(count)", globals(), {"bench": bench, "count": count}, profile)
        return
    best = min(bench.run(count) for _ in range(rounds))
    print(
        f"{best / count * 1e6:.1f} us per request (best of {rounds} x {count}; upstream connections {bench.opened})"
    )


if __name__ == "__main__":
    main()
