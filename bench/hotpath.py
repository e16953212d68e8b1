"""
Profile the hot path: the proxy in-process under cProfile while wrk loads it.

    python bench/hotpath.py UPSTREAM_URL [SECONDS]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import socket
import subprocess
import sys
import threading

from twisted.internet import reactor

from sora2proxy._tap import Options, build_service


def main() -> None:
    upstream, seconds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))  # a free loopback port, read back
    port = probe.getsockname()[1]
    probe.close()
    options = Options()
    # The default configuration (its access lines to a file sink, the default's path, but not to the terminal).
    options.parseOptions(["--listen", f"tcp:{port}:interface=127.0.0.1", "--admin-listen", "none",
                          "--upstream", upstream, "--prefix", "/", "--health-path", "/api/small.json",
                          "--access-log", os.devnull])  # fmt: skip
    assert options.config is not None
    service = build_service(options.config, options.listen, reactor)
    service.startService()

    def load() -> None:
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t2", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/api/small.json"],
            capture_output=True, text=True,
        )  # fmt: skip
        print(out.stdout)
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    reactor.callLater(1, lambda: threading.Thread(target=load).start())  # type: ignore[attr-defined]
    profile = cProfile.Profile()
    profile.runcall(reactor.run)  # type: ignore[attr-defined]
    pstats.Stats(profile).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
