"""
Classification of a failed try: which error the client sees, and whether the
request may have reached the upstream.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import URI

from sora2proxy import classify
from sora2proxy.http._endpoints import UpstreamEndpoints
from sora2proxy.resilience._classify import TryTimedOut


def kind_of(exc: BaseException) -> tuple[str, bool] | None:
    result = classify(Failure(exc))
    return None if result is None else (result.kind.error_type, result.reached_upstream)


class ClassifyTests(SynchronousTestCase):
    def test_never_reached(self) -> None:
        """Refused, DNS, connect timeouts and unsent requests never reached the upstream."""
        self.assertEqual(kind_of(error.ConnectionRefusedError()), ("ECONNREFUSED", False))
        self.assertEqual(kind_of(error.DNSLookupError("x")), ("UPSTREAM_ERROR", False))
        self.assertEqual(kind_of(error.TimeoutError()), ("TIMEOUT", False))
        self.assertEqual(kind_of(error.NoRouteError()), ("UPSTREAM_ERROR", False))
        self.assertEqual(kind_of(error.ConnectingCancelledError(None)), ("UPSTREAM_ERROR", False))
        self.assertEqual(kind_of(RequestNotSent()), ("UPSTREAM_ERROR", False))
        timed_out = TryTimedOut(Failure(error.ConnectingCancelledError(None)), 30)
        self.assertEqual(kind_of(timed_out), ("TIMEOUT", False))

    def test_may_have_reached(self) -> None:
        """Anything after the connection was made may have reached the upstream."""
        lost = [Failure(error.ConnectionLost())]
        self.assertEqual(kind_of(ResponseNeverReceived(lost)), ("UPSTREAM_ERROR", True))
        self.assertEqual(kind_of(RequestTransmissionFailed(lost)), ("UPSTREAM_ERROR", True))
        self.assertEqual(
            kind_of(ResponseFailed([Failure(ValueError("bad status line"))])), ("UPSTREAM_ERROR", True)
        )
        self.assertEqual(kind_of(ResponseFailed([])), ("UPSTREAM_ERROR", True))
        self.assertEqual(
            kind_of(ResponseNeverReceived([Failure(CancelledError())])), ("UPSTREAM_ERROR", True)
        )
        self.assertEqual(kind_of(error.ConnectionDone()), ("UPSTREAM_ERROR", True))
        timed_out = TryTimedOut(Failure(ResponseNeverReceived([Failure(CancelledError())])), 30)
        self.assertEqual(kind_of(timed_out), ("TIMEOUT", True))

    def test_reasons_for_people(self) -> None:
        """The reason says what happened in words."""
        done = classify(Failure(ResponseNeverReceived([Failure(error.ConnectionDone())])))
        assert done is not None
        self.assertIn("closed the connection", done.reason)
        reset = classify(Failure(ResponseNeverReceived([Failure(error.ConnectionLost())])))
        assert reset is not None
        self.assertIn("reset", reset.reason)

    def test_bugs_are_not_network_failures(self) -> None:
        """An exception of the proxy's own is not mistaken for an upstream failure."""
        self.assertIsNone(kind_of(ZeroDivisionError()))
        self.assertIsNone(kind_of(KeyError("x")))


class EndpointTests(SynchronousTestCase):
    def test_endpoint_kinds(self) -> None:
        """IP literals connect directly, names through HostnameEndpoint, https over TLS."""
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )
        from twisted.internet.testing import MemoryReactorClock

        endpoints = UpstreamEndpoints(MemoryReactorClock())
        self.assertIsInstance(
            endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:3101/a")), TCP4ClientEndpoint
        )
        self.assertIsInstance(
            endpoints.endpointForURI(URI.fromBytes(b"http://[::1]:3101/a")), TCP6ClientEndpoint
        )
        self.assertIsInstance(
            endpoints.endpointForURI(URI.fromBytes(b"http://localhost:3101/a")), HostnameEndpoint
        )
        tls = endpoints.endpointForURI(URI.fromBytes(b"https://api.example.test/a"))
        self.assertNotIsInstance(tls, HostnameEndpoint)
