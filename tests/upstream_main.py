"""
A stand-alone test upstream: C{python -m tests.upstream_main [PORT]} serves
L{RecordingUpstream} on loopback and prints C{listening on PORT}.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.server import Site

from tests.helpers import RecordingUpstream


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    site = Site(RecordingUpstream())
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening on", listening.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
