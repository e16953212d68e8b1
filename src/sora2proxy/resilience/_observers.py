"""
What resilience reports, and to whom: the L{typing.Protocol}s of its
observers.  C{ops}' C{Telemetry} satisfies them structurally, so that this
layer imports nothing of C{ops}; C{build_proxy} hands one in.
"""

from __future__ import annotations

from typing import Protocol


class HealthObserver(Protocol):
    """
    Told of each finished health check.
    """

    def health_checked(self, upstream: str, status: str, seconds: float) -> None:
        """
        A health check of C{upstream} ended with C{status} (C{up}, C{down})
        after C{seconds}.
        """


class TryObserver(Protocol):
    """
    Told of each try a request sends, and of each retry.
    """

    def try_finished(self, upstream: str, outcome: str, seconds: float) -> None:
        """
        A try to C{upstream} ended: C{outcome} is C{ok}, C{5xx} or the
        failure's errorType; C{seconds} from sending to response headers.
        """

    def retried(self, upstream: str) -> None:
        """
        A retry is sent to C{upstream}.
        """
