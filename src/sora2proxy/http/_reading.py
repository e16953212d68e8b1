"""
The client connection's reads as the proxy's channel pauses and resumes
them: Twisted's channel resumes its transport after every answer, and a
transport that was never paused still makes its reactor calls for it.

This module imports nothing of the package.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class PauseTracking:
    """
    The channel's network producer (its transport), with a resume that does
    nothing unless the channel paused it.  Every pause and resume of the
    channel's reads goes through its C{_networkProducer}.
    """

    __slots__ = ("_producer", "paused")

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer.unregisterProducer()
