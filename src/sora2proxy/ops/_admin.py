"""
The admin port (C{--admin-listen}), a Klein app never served on the public
port: C{/health}, C{/ready}, C{/metrics}, C{/status} and C{/status.json}.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.server import Request

from .._errors import reason_phrase
from ..resilience._upstreams import NOT_READY, Balancer, serving_state, usable
from ._admin_hosts import LocalHostsOnly
from ._metrics import Telemetry
from ._status import render_status


@define
class Admin:
    """
    The admin endpoints of one proxy.
    """

    telemetry: Telemetry
    balancer: Balancer
    app: Klein = field(factory=Klein)

    def __attrs_post_init__(self) -> None:
        route = self.app.route
        route("/health", methods=["GET", "HEAD"])(self.health)
        route("/ready", methods=["GET", "HEAD"])(self.ready)
        route("/metrics", methods=["GET"])(self.metrics)
        route("/status", methods=["GET"])(self.status)
        route("/status.json", methods=["GET"])(self.status_json)

    def resource(self) -> Any:
        """
        The admin app as a twisted.web resource, answering only local
        C{Host}s (L{LocalHostsOnly}).
        """
        return LocalHostsOnly(self.app.resource())

    def _json(self, request: Request, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status, reason_phrase(status))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()

    def health(self, request: Request) -> bytes:
        """
        The proxy process is alive (a liveness probe).
        """
        return self._json(request, {"status": "alive"})

    def ready(self, request: Request) -> bytes:
        """
        200 while the proxy is C{serving} or C{degraded} (at least one
        upstream may take requests, and not draining: a readiness probe);
        503 when C{not ready}.  C{state} is the status page's word.
        """
        upstreams = self.balancer.upstreams
        state = serving_state(upstreams, self.telemetry.draining)
        ready = state != NOT_READY
        body = {
            "ready": ready,
            "state": state,
            "draining": self.telemetry.draining,
            "available": [u.url for u in usable(upstreams)] if ready else [],
        }
        return self._json(request, body, 200 if ready else 503)

    def metrics(self, request: Request) -> bytes:
        """
        Prometheus text format.
        """
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        data: bytes = generate_latest(self.telemetry.registry)
        return data

    def _snapshot(self) -> dict[str, Any]:
        telemetry = self.telemetry
        data = telemetry.board.snapshot(self.balancer.upstreams, telemetry.in_flight, telemetry.draining)
        data["state"] = serving_state(self.balancer.upstreams, telemetry.draining)
        for name, section in telemetry.sections.items():
            data[name] = section()
        return data

    def status(self, request: Request) -> bytes:
        """
        The status page, for people.
        """
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return render_status(self._snapshot())

    def status_json(self, request: Request) -> bytes:
        """
        The status page's data.
        """
        return self._json(request, self._snapshot())
