"""
A slow HTTP/2 reader keeps the proxy's memory flat: the proxy runs as its
own process (twistd, a TLS listener), its resident memory read from
C{/proc} while a client that grants the largest window HTTP/2 allows stops
reading a 256 MiB answer, then reads it in small sips.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from .h2_client import HUGE_WINDOW, H2Client
from .helpers import eventually
from .soak import rss_mib
from .test_cli import BIN, Child
from .test_h2 import H2Mixin, MiB, StreamingUpstream, Zeros


def settled(zeros: Zeros) -> Deferred[object]:
    """Fires once the upstream has written nothing more for half a second (paused, or done)."""
    samples: list[int] = []

    def still() -> bool:
        samples.append(zeros.written)
        return len(samples) > 5 and len(set(samples[-6:])) == 1

    return eventually(still, 60, "the upstream settling", interval=0.1)


class SlowReaderMemoryTests(H2Mixin, TestCase):
    """The proxy process's memory while an h2 client reads slowly."""

    @inlineCallbacks
    def test_slow_h2_reader_keeps_memory_flat(self) -> Any:
        """A 256 MiB answer to a reader that stops reading waits upstream, not in the proxy's memory."""
        self.certificate()
        upstream = StreamingUpstream()
        _, url = self.start_upstream(upstream)
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", self.tls_listen()]
        proxy = Child(
            self,
            [*argv, "--upstream", url, "--health-path", "", "--access-log", "off", "--admin-listen", "none"],
        )
        port = int(proxy.wait_for(r"ProxySite \(TLS\) starting on (\d+)").group(1))
        client = yield self.h2(port, H2Client(window=HUGE_WINDOW, keep=False))
        for _ in range(20):  # warm up before the baseline
            answer = client.request(b"GET", b"/api/proxy/warm")
            yield answer.done
        before = rss_mib(proxy.process.pid)
        client.transport.pauseProducing()  # the reader stops reading
        big = client.request(b"GET", b"/api/proxy/big/256")
        yield eventually(lambda: upstream.producers, 20, "the request upstream")
        zeros = upstream.producers[0]
        yield settled(zeros)
        for _ in range(10):  # sips: a little read now and then; the upstream keeps pausing
            written, received = zeros.written, big.received
            client.transport.resumeProducing()
            yield eventually(lambda r=received: big.received > r + MiB, 20, "a sip of the answer")
            client.transport.pauseProducing()
            yield settled(zeros)
            self.assertLess(zeros.written - written, 64 * MiB)
        grown = rss_mib(proxy.process.pid) - before
        self.assertLess(zeros.written, 128 * MiB, "the upstream was read far ahead of the reader")
        self.assertLess(grown, 24, f"the proxy grew by {grown:.1f} MiB")
        self.assertFalse(big.ended)
