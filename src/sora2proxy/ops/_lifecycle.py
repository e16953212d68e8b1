"""
Graceful drain: on stop (SIGTERM, Ctrl+C) the proxy turns C{/ready} to 503,
stops accepting, lets the requests in flight finish for up to
C{--drain-timeout} seconds, then lets the rest of the process stop.  And the
stop of a process that cannot do its job, with a non-zero exit status.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import Any

from attrs import define, field
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ._metrics import Telemetry

#: Net allocations of container objects between two young collections
#: (CPython's default is 700).
YOUNG_COLLECTION_AFTER = 10_000


class FrozenStartup(Service):
    """
    At start, moves every object alive then (modules, configuration: what
    lives as long as the process) to the garbage collector's permanent
    generation (C{gc.freeze}), so that its full collections stop walking
    them.  With many requests in flight those collections otherwise cost
    about 7% of each request's work (C{CONCURRENCY=64 bench/path.py}).

    It also lets the young generation grow to L{YOUNG_COLLECTION_AFTER}
    objects before a collection.  A finished request leaves no reference
    cycle (C{tests/test_no_cycles.py}), so those collections find nothing to
    free; with 64 requests in flight, each walked every object the requests
    in flight hold, about 4% of a request's work at the default 700.

    The twistd entry point adds it; an application that embeds the proxy
    keeps its own collector settings.
    """

    def startService(self) -> None:
        Service.startService(self)
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_AFTER, middle, old)


@define(slots=False)
class DrainingListeners(MultiService):
    """
    The public listeners, stopped by draining.

    @ivar drain_timeout: the longest wait for requests in flight.
    """

    log = Logger()

    _telemetry: Telemetry
    _clock: IReactorTime
    drain_timeout: float = 10.0
    _watch: LoopingCall | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)

    def stopService(self) -> Deferred[None]:
        telemetry = self._telemetry
        telemetry.draining = True
        self.log.info(
            "draining: {in_flight} requests in flight, waiting up to {timeout:g} s",
            in_flight=telemetry.in_flight,
            timeout=self.drain_timeout,
        )
        stopped: Deferred[list[object]] = gatherResults(
            [maybeDeferred(child.stopService) for child in list(self)]
        )
        self.running = 0
        drained: Deferred[None] = Deferred()
        deadline = self._clock.seconds() + self.drain_timeout

        def check() -> None:
            if telemetry.in_flight <= 0 or self._clock.seconds() >= deadline:
                if telemetry.in_flight > 0:
                    self.log.warn(
                        "drain timeout: {in_flight} requests still in flight", in_flight=telemetry.in_flight
                    )
                assert self._watch is not None
                self._watch.stop()
                drained.callback(None)

        self._watch = LoopingCall(check)
        self._watch.clock = self._clock
        self._watch.start(0.05, now=True)
        return stopped.addCallback(lambda _: drained)


class StopInOrder(MultiService):
    """
    A service collection that stops its children one at a time, last added
    first, each after the one before has finished stopping (Twisted's
    L{MultiService} stops them all at once): the listeners drain while the
    upstreams and the spawned backend still run.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_each())

    async def _stop_each(self) -> None:
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)


@define
class ExitOnce:
    """
    Stops the process (L{exit_when_stopped}) on the first fatal failure it
    is told of; later ones (another worker failing the same way) add nothing.
    """

    _reactor: Any
    _status: int | None = field(default=None, init=False)

    def __call__(self, line: str, status: int) -> None:
        if self._status is None:
            self._status = status
            exit_when_stopped(self._reactor, line, status)


def exit_when_stopped(reactor: Any, line: str, status: int) -> None:
    """
    Stop the whole process because it cannot do its job: print C{line} on
    the original standard error (twistd sends C{sys.stderr} to the log),
    stop the reactor (every service stops as on SIGTERM, children included)
    and, once twistd has cleaned up, exit with C{status} (twistd itself
    would exit with 0).
    """
    stream = sys.__stderr__
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()

    def leave() -> None:
        # Registered last, so run first: run the others (coverage's, logging's), then exit.
        atexit.unregister(leave)
        atexit._run_exitfuncs()
        for out in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if out is not None:
                out.flush()
        os._exit(status)

    atexit.register(leave)
    if reactor.running:
        reactor.stop()
