"""
Profile the hot path: the proxy in-process under cProfile while wrk loads it.

    python bench/hotpath.py UPSTREAM_URL [SECONDS]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import threading

from twisted.internet import reactor

from sora2proxy._tap import Options, build_service


def main() -> None:
    upstream, seconds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    options = Options()
    options.parseOptions(["--listen", "tcp:44790:interface=127.0.0.1", "--admin-listen", "none",
                          "--upstream", upstream, "--prefix", "/", "--health-path", "/api/small.json",
                          "--access-log", os.devnull])  # fmt: skip
    assert options.config is not None
    service = build_service(options.config, options.listen, reactor)
    service.startService()

    def load() -> None:
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t2", "-c64", f"-d{seconds}s", "http://127.0.0.1:44790/api/small.json"],
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
