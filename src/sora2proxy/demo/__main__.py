"""
Run the demo backend: ``python -m sora2proxy.demo --port 3101``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

log = Logger(namespace="demo")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sora2proxy.demo",
        description="A demo backend with the surface of the Sora2 API (in memory; for trying the proxy).",
    )
    parser.add_argument("--port", type=int, default=3101, help="TCP port (0 picks a free one)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of answers that are 500s")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--down-for", type=float, default=0.0, help="seconds before it starts listening")
    args = parser.parse_args(argv)
    if not 0 <= args.fail_rate <= 1 or args.latency < 0 or args.down_for < 0:
        parser.error("--fail-rate is a fraction in [0, 1]; --latency and --down-for are seconds >= 0")

    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    from ..http._site import QuietSite
    from ._app import DemoBackend, Faults

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    backend = DemoBackend(reactor, Faults(args.fail_rate, args.latency))
    site = QuietSite(backend.resource())

    def listen() -> None:
        port = reactor.listenTCP(args.port, site, interface=args.interface)
        log.info("demo backend listening on {port}", port=port.getHost().port)

    if args.down_for:
        log.info("demo backend down for {seconds} s", seconds=args.down_for)
    reactor.callLater(args.down_for, listen)
    reactor.run()


if __name__ == "__main__":
    main()
