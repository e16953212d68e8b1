"""
The listening ports, bound while the service is built (before twistd starts
logging or forks), so that a port that cannot be bound stops start-up with one
line in nginx's words (C{bind() to 0.0.0.0:3200 failed (98: Address already
in use)}) instead of a traceback and a process that serves nothing.

A start-up failure exits with L{STARTUP_FAILED}; a C{--workers} parent stops
when a worker exits with it, instead of restarting the worker for ever.
"""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from .._config import ConfigError

#: The exit status of a start-up failure (a bad option, a port that cannot
#: be bound): C{EX_CONFIG} of C{sysexits.h}.  Restarting will not help.
STARTUP_FAILED = 78

_PORTED = ("tcp", "tcp6", "ssl")


def exit_at_startup(error: Exception) -> NoReturn:
    """
    Print C{sora2proxy: error: OPTION: PROBLEM} on standard error and exit
    with L{STARTUP_FAILED}.
    """
    print(f"sora2proxy: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(STARTUP_FAILED)


def check_port_range(option: str, description: str) -> None:
    """
    @raise ConfigError: if a C{tcp:}, C{tcp6:} or C{ssl:} endpoint names a
        port outside 0-65535.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in _PORTED:
        return
    for part in parts[1:]:
        value = part.split("=", 1)[1] if part.startswith("port=") else part
        if value.isdigit() and (part.startswith("port=") or "=" not in part):
            if int(value) > 65535:
                raise ConfigError(option, f"port {value} in {description!r} is out of range (0-65535)")
            return


def bind_failure(option: str, description: str, error: BaseException) -> ConfigError:
    """
    @return: the one-line error for an endpoint that could not be bound,
        worded as nginx words it.
    """
    if isinstance(error, CannotListenError):
        interface = error.interface or ("::" if description.startswith("tcp6:") else "0.0.0.0")
        host = f"[{interface}]" if ":" in interface else interface
        address = f"{host}:{error.port}"
        error = error.socketError
    else:
        address = description
    if isinstance(error, OSError) and error.errno is not None:
        reason = f"{error.errno}: {error.strerror}"
    else:
        reason = str(error) or type(error).__name__
    return ConfigError(option, f"bind() to {address} failed ({reason})")


def listen_now(option: str, description: str, reactor: Any, factory: Any) -> IService:
    """
    Bind C{description} now; the service returned closes the port when it stops.

    @raise ConfigError: the port cannot be bound (see L{bind_failure}).
    """
    try:
        listening: Deferred[IListeningPort] = serverFromString(reactor, description).listen(factory)
    except (CannotListenError, OSError, OverflowError, ValueError) as e:
        raise bind_failure(option, description, e) from None
    if not listening.called:  # an endpoint that binds later
        return BoundPort(listening, option, description, reactor)
    outcome: list[IListeningPort | Failure] = []
    listening.addBoth(outcome.append)  # the result is taken, a failure included
    if isinstance(outcome[0], Failure):
        raise bind_failure(option, description, outcome[0].value or Exception()) from None
    return BoundPort(outcome[0], option, description, reactor)


def listen_shared_now(option: str, description: str, reactor: Any, factory: Any) -> IService:
    """
    Bind a port shared with the other workers (C{SO_REUSEPORT}) now.

    @raise ConfigError: the port cannot be bound.
    """
    from ._workers import listen_reuseport

    try:
        return BoundPort(listen_reuseport(reactor, description, factory), option, description, reactor)
    except (CannotListenError, OSError, OverflowError) as e:
        raise bind_failure(option, description, e) from None


class BoundPort(Service):
    """
    A port bound when the service was built; stopping the service closes it.
    An endpoint that binds later (none of TCP, TLS or UNIX does) stops the
    process with the one line if it fails.
    """

    def __init__(
        self, port: IListeningPort | Deferred[IListeningPort], option: str, description: str, reactor: Any
    ) -> None:
        self._port: IListeningPort | None = None
        if isinstance(port, Deferred):
            port.addCallbacks(self._bound, lambda f: self._failed(f, option, description, reactor))
        else:
            self._port = port

    def _bound(self, port: IListeningPort) -> None:
        self._port = port

    def _failed(self, failure: Failure, option: str, description: str, reactor: Any) -> None:
        from ._lifecycle import exit_when_stopped

        error = bind_failure(option, description, failure.value or Exception())
        exit_when_stopped(reactor, f"sora2proxy: error: {error}", STARTUP_FAILED)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self._port is None:
            return None
        port, self._port = self._port, None
        return port.stopListening()
