"""
A stand-alone test upstream: C{python -m tests.upstream_main [PORT]} serves
L{RecordingUpstream} on loopback and prints C{listening on PORT}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.helpers import RecordingUpstream


class SlowOnRequest(Resource):
    """Paths containing /slow answer after 1.5 s; the rest as RecordingUpstream."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.inner = RecordingUpstream()

    def render(self, request: Request) -> Any:
        if request.path.endswith(b"/__count"):
            counts: dict[str, int] = {}
            for seen in self.inner.seen:
                counts[seen.method.decode()] = counts.get(seen.method.decode(), 0) + 1
            return json.dumps(counts).encode()
        if b"/slow" not in request.path:
            return self.inner.render(request)

        def answer() -> None:
            request.write(b'{"slow": "done"}')
            request.finish()

        deferLater(reactor, 1.5, answer)
        return NOT_DONE_YET


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    site = Site(SlowOnRequest())
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening on", listening.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
