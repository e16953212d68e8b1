"""
L{RefusalLog}: a request the server side refused before the proxy's resource
saw it (a malformed head's 400, 408, 413, 414, 431: see
L{sora2proxy.http._refusal}) gets what every request gets: one access line,
its count in the metrics and on the status page, and its error in the log.
"""

from __future__ import annotations

from attrs import frozen
from twisted.logger import Logger

from ..http._refusal import Refusal
from ._seams import AccessSink, RequestTelemetry, record_access


@frozen
class RefusalLog:
    """
    A L{sora2proxy.http._refusal.RefusalListener} that reports to the
    proxy's telemetry and access log.

    @ivar upstream: the upstream an access line names (none was tried).
    """

    log = Logger()

    telemetry: RequestTelemetry
    access: AccessSink
    upstream: str

    def request_refused(self, refusal: Refusal) -> None:
        """
        Log, count and write the access line of C{refusal}.
        """
        self.log.info(
            "{status} {error_type} for request {request_id}: {message}",
            status=refusal.status,
            error_type=refusal.error_type,
            request_id=refusal.request_id,
            message=refusal.message,
        )
        self.telemetry.request_started()
        self.telemetry.request_finished(
            refusal.method,
            refusal.target,
            refusal.status,
            refusal.error_type,
            refusal.seconds,
            refusal.request_id,
            "",  # never sent
        )
        record_access(
            self.access,
            refusal.method,
            refusal.target,
            refusal.status,
            0,
            refusal.seconds,
            refusal.error_type,
            refusal.request_id,
            self.upstream,
            protocol=refusal.protocol,
        )
