"""
Upstream health: L{HealthState}, what is known of one upstream, and
L{HealthMonitor}, the service whose C{LoopingCall} keeps it current.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import treq
from attrs import define, field
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from .._errors import ECONNREFUSED
from ._classify import TryFailure, classify
from ._observers import HealthObserver

#: Health samples kept per upstream for the status page's timeline.
HISTORY = 120


class Health(enum.Enum):
    """
    What the proxy knows of an upstream.
    """

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


#: The members read on every request, looked up once: Python 3.11's
#: C{EnumType} defines C{__getattr__}, which slows every read from the class.
_UP, _DOWN = Health.UP, Health.DOWN


@define
class HealthState:
    """
    The health of one upstream, written by its monitor and by the outcome of
    tries, read by the gate when a request arrives.

    @ivar upstream: the upstream's base URL, for messages.
    @ivar status: L{Health.UNKNOWN} until the first check.
    @ivar reason: why it is down (C{"connection refused"}, C{"HTTP 500"}).
    @ivar changed_at: clock time of the last change of C{status}.
    @ivar checked_at: clock time of the last finished health check.
    @ivar passive: whether tries also update it (health checks on).
    @ivar history: (time, status) of recent checks and changes, oldest first.
    @ivar on_pass: called after each passing health check (not after a
        proxied try): what a health check proves, such as the end of an
        ejection.
    """

    _clock: IReactorTime
    upstream: str
    status: Health = Health.UNKNOWN
    reason: str = ""
    changed_at: float | None = None
    checked_at: float | None = None
    passive: bool = True
    history: deque[tuple[float, str]] = field(factory=lambda: deque(maxlen=HISTORY))
    on_pass: list[Callable[[], None]] = field(factory=list)

    @property
    def down(self) -> bool:
        """
        Whether requests should fail fast.
        """
        return self.status is _DOWN

    def mark_up(self) -> None:
        """
        The upstream answered.
        """
        self._set(Health.UP, "")

    def check_passed(self) -> None:
        """
        A health check passed: the upstream is up, and L{on_pass} hears it.
        """
        self.mark_up()
        for listener in self.on_pass:
            listener()

    def mark_down(self, reason: str) -> None:
        """
        The upstream failed; C{reason} says how.
        """
        self._set(Health.DOWN, reason)

    def _set(self, status: Health, reason: str) -> None:
        if status is not self.status:
            self.changed_at = self._clock.seconds()
            self.history.append((self.changed_at, status.value))
            HealthMonitor.log.info(
                "upstream {upstream} is {status}{why}",
                upstream=self.upstream,
                status=status.value,
                why=f" ({reason})" if reason else "",
            )
        self.status = status
        self.reason = reason

    # Told of proxied tries by the RequestRouter.
    def try_succeeded(self) -> None:
        """
        A proxied try got a response: the upstream is up.
        """
        if self.passive and (self.status is not _UP or self.reason):  # else already so
            self.mark_up()

    def try_failed(self, failure: TryFailure) -> None:
        """
        A proxied try failed: a refused connection marks the upstream down at once.
        """
        if self.passive and failure.kind is ECONNREFUSED:
            self.mark_down(failure.reason)


@define
class HealthMonitor(Service):
    """
    Checks one upstream every C{interval} seconds with a GET of C{url}: a 2xx
    answer within C{timeout} seconds is healthy, anything else unhealthy.  A
    failing check never stops the loop.
    """

    log = Logger()

    state: HealthState
    _clock: IReactorTime
    _agent: IAgent
    _url: bytes
    _interval: float
    _timeout: float
    _telemetry: HealthObserver | None = None
    _loop: LoopingCall | None = field(default=None, init=False)
    _check: Deferred[None] | None = field(default=None, init=False)
    _check_started: float = field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        Service.__init__(self)

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self._check is not None:
            self._check.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return None

    def check(self) -> Deferred[None]:
        """
        Run one health check now and update the state; never fails.
        """
        self._check_started = self._clock.seconds()
        # The agent itself, not treq.get: treq's URL handling rejects IPv6 literals.
        answer: Deferred[Any] = self._agent.request(
            b"GET", self._url, Headers({b"user-agent": [b"sora2proxy-health"]})
        )
        answer.addCallback(self._answered)
        answer.addTimeout(self._timeout, self._clock)
        answer.addErrback(self._failed)
        answer.addBoth(self._checked)
        self._check = answer
        return answer

    def _answered(self, response: IResponse) -> Deferred[None]:
        drained: Deferred[None] = treq.collect(response, lambda _data: None)

        def judge(_: object) -> None:
            if 200 <= response.code < 300:
                self.state.check_passed()
            else:
                self.state.mark_down(f"health check answered HTTP {response.code}")

        return drained.addCallback(judge)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return  # cancelled by stopService: nothing was learnt
        try_failure = classify(failure)
        if failure.check(defer.TimeoutError):
            reason = f"health check timed out after {self._timeout:g} s"
        elif try_failure is not None:
            reason = try_failure.reason
        else:
            reason = f"health check failed: {failure.getErrorMessage()}"
            self.log.failure("health check of {url} failed", failure, url=self._url)
        self.state.mark_down(reason)

    def _checked(self, _: object) -> None:
        self._check = None
        now = self._clock.seconds()
        state = self.state
        state.checked_at = now
        state.history.append((now, state.status.value))
        if self._telemetry is not None and self.running:
            self._telemetry.health_checked(state.upstream, state.status.value, now - self._check_started)
