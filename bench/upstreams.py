"""
A contender of the benchmark: Twisted's own ReverseProxyResource as a tiny
server.  ``python bench/upstreams.py rpr PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site


class QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        pass


def main() -> None:
    port = int(sys.argv[2])
    resource = ReverseProxyResource("127.0.0.1", int(sys.argv[3]), b"")
    listening = reactor.listenTCP(port, QuietSite(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening on", listening.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
