"""
Classify the failure of one upstream try: which error it is, and whether the
request may have reached the upstream (which decides whether it may be sent
again); and read an upstream answer's C{Retry-After}.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from attrs import frozen
from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from .._errors import ECONNREFUSED, TIMEOUT, UPSTREAM_ERROR, UPSTREAM_TLS_ERROR, ErrorKind


@frozen
class TryFailure:
    """
    What went wrong with one try.

    @ivar kind: the error-table row it maps to.
    @ivar reached_upstream: C{False} only when the request provably never
        reached the upstream (refused, DNS failure, not connected in time,
        not sent); C{True} when it may have.
    @ivar reason: a few words for people (C{"connection refused"}).
    @ivar permanent: another try cannot help (a certificate that does not verify).
    """

    kind: ErrorKind
    reached_upstream: bool
    reason: str
    permanent: bool = False


class TryTimedOut(Exception):
    """
    A try was cancelled by its timeout; C{cause} is what the cancelled try failed with.
    """

    def __init__(self, cause: Failure, seconds: float) -> None:
        super().__init__(cause, seconds)
        self.cause = cause
        self.seconds = seconds


_NOT_CONNECTED = (error.ConnectingCancelledError,)


def _reasons(exception: BaseException) -> list[BaseException]:
    if isinstance(exception, ResponseFailed | RequestTransmissionFailed):
        return [reason.value for reason in exception.reasons]
    return []


def _describe(exceptions: list[BaseException]) -> str:
    for exc in exceptions:
        if isinstance(exc, error.ConnectionDone):
            return "the upstream closed the connection before answering"
        if isinstance(exc, error.ConnectionLost):
            return "the connection to the upstream was reset"
    if exceptions:
        return f"invalid upstream response ({type(exceptions[0]).__name__}: {exceptions[0]})"
    return "the upstream response failed"


def _is_tls_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("OpenSSL", "service_identity"))


def _tls_text(exc: BaseException) -> str:
    text = str(exc)
    if "certificate verify failed" in text:
        return "the certificate does not verify against the trusted CAs"
    if type(exc).__name__ in ("VerificationError", "CertificateError"):
        return f"the certificate does not match the host ({text})"
    return text or type(exc).__name__


def classify(failure: Failure) -> TryFailure | None:
    """
    Turn the failure of one try into a L{TryFailure}.

    @return: L{None} when the failure is not a network failure of the try
        (for instance a bug in the proxy), so that it is not mistaken for one.
    """
    exc = failure.value
    if isinstance(exc, TryTimedOut):
        cause = exc.cause.value
        reached = not isinstance(cause, _NOT_CONNECTED)
        what = "answer" if reached else "accept the connection"
        return TryFailure(TIMEOUT, reached, f"the upstream did not {what} within {exc.seconds:g} s")
    if isinstance(exc, error.ConnectionRefusedError):
        return TryFailure(ECONNREFUSED, False, "connection refused")
    if isinstance(exc, error.DNSLookupError):
        return TryFailure(UPSTREAM_ERROR, False, "DNS lookup of the upstream host failed")
    if isinstance(exc, error.TimeoutError):
        return TryFailure(TIMEOUT, False, "connecting to the upstream timed out")
    if isinstance(exc, error.ConnectingCancelledError):
        return TryFailure(UPSTREAM_ERROR, False, "the try was cancelled while connecting")
    if isinstance(exc, error.ConnectError):
        return TryFailure(UPSTREAM_ERROR, False, f"could not connect to the upstream ({exc})")
    if isinstance(exc, RequestNotSent):
        return TryFailure(UPSTREAM_ERROR, False, "the pooled connection closed before sending")
    if isinstance(exc, ResponseNeverReceived | RequestTransmissionFailed | ResponseFailed):
        reasons = _reasons(exc)
        tls = [r for r in reasons if _is_tls_error(r)]
        if tls:
            # The handshake failed: the request, buffered until then, was never sent.
            return TryFailure(
                UPSTREAM_TLS_ERROR, False, f"TLS with the upstream failed: {_tls_text(tls[0])}", True
            )
        if any(isinstance(r, CancelledError) for r in reasons):
            return TryFailure(UPSTREAM_ERROR, True, "the try was cancelled")
        return TryFailure(UPSTREAM_ERROR, True, _describe(reasons))
    if isinstance(exc, error.ConnectionLost | error.ConnectionDone):
        return TryFailure(UPSTREAM_ERROR, True, _describe([exc]))
    return None


def parse_retry_after(values: list[bytes] | None, now: float) -> float | None:
    """
    @return: the seconds an upstream C{Retry-After} asks for (delay-seconds or
        an HTTP date), or L{None} when absent or unreadable.
    """
    if not values:
        return None
    text = values[0].decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
