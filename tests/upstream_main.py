"""
A stand-alone test upstream: C{python -m tests.upstream_main [PORT]} serves
L{RecordingUpstream} on loopback and prints C{listening on PORT}.
"""

from __future__ import annotations

import json
import os
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
        if request.path.endswith(b"/__last"):
            last = self.inner.seen[-1] if self.inner.seen else None
            return json.dumps({"uri": None if last is None else last.uri.decode("latin-1")}).encode()
        if request.path.endswith(b"/__posts"):
            counts = {}
            for seen in self.inner.seen:
                if seen.method == b"POST":
                    body = seen.body.decode("latin-1")
                    counts[body] = counts.get(body, 0) + 1
            return json.dumps(counts).encode()
        if b"/reset" in request.path:
            self.inner.seen.append(_seen(request))
            assert request.transport is not None
            request.transport.abortConnection()
            return NOT_DONE_YET
        if b"/slow" not in request.path:
            request.setHeader(b"x-upstream", b"yes")
            if request.method == b"POST" and os.environ.get("SORA2PROXY_POST_LOG"):
                assert request.content is not None
                with open(os.environ["SORA2PROXY_POST_LOG"], "ab") as log:
                    log.write(request.content.read() + b"\n")
                request.content.seek(0)
            return self.inner.render(request)

        def answer() -> None:
            if not request._disconnected:
                request.write(b'{"slow": "done"}')
                request.finish()

        delay = 0.3 if b"/slowish" in request.path else 1.5
        deferLater(reactor, delay, answer)
        return NOT_DONE_YET


def _seen(request: Request) -> Any:
    from tests.helpers import Seen

    assert request.content is not None
    return Seen(request.method, request.uri, request.requestHeaders.copy(), request.content.read())


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    site = Site(SlowOnRequest())
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening on", listening.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
