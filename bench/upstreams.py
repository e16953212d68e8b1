"""
Helpers of the benchmark: a POST sink and Twisted's own ReverseProxyResource,
each a tiny server.  ``python bench/upstreams.py sink PORT`` or
``python bench/upstreams.py rpr PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Sink(Resource):
    """Reads a request body, answers a small JSON (the 1 MiB POST scenario's backend)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        size = len(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        return b'{"received": %d}' % size


class QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        pass


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "sink":
        resource: Resource = Sink()
    else:
        resource = ReverseProxyResource("127.0.0.1", int(sys.argv[3]), b"")
    listening = reactor.listenTCP(port, QuietSite(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening on", listening.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
