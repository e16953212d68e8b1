"""
Reloading the configuration without a restart (SIGHUP, as nginx): the
L{Reloader} re-reads the options (the C{--config} file under the same
command line and environment), and hands a valid result to every
L{Reloadable} part registered with it.  New requests read the new
configuration when they start; those in flight keep the one they started
with.  A file that fails validation changes nothing, and one log line
says why.

Options that cannot change while the proxy runs (listen addresses,
workers, the admin port...) keep their values; each change to one is
logged as needing a restart.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.usage import UsageError

from .._config import ConfigError, ProxyConfig

#: The L{ProxyConfig} fields a reload applies; any other field's change needs a restart.
RELOADABLE = frozenset(
    {
        "upstreams",
        "health_path",
        "health_interval",
        "health_timeout",
        "attempts",
        "backoff",
        "timeout",
        "suggestion",
        "dev",
        "retry_all_methods",
        "max_retry_after",
        "deadline",
        "jitter",
        "max_backoff",
        "retry_budget",
        "balance",
        "eject_after",
        "eject_time",
        "preserve_host",
        "allow_underscore_headers",
        "max_body",
        "header_timeout",
        "idle_timeout",
        "max_inflight",
        "tunnel_idle_timeout",
        "idempotency_ttl",
        "idempotency_max_body",
        "idempotency_fail_closed",
        "require_idempotency_key",
        "identity_headers",
        "rate_limit",
        "max_concurrent",
        "rate_limit_fail_closed",
        "sse_errors",
    }
)


class Reloadable(Protocol):
    """
    A part of the proxy that takes a new configuration while it runs.
    """

    def reconfigure(self, config: ProxyConfig) -> None:
        """
        Use C{config} (valid, its restart-only fields unchanged) from now on:
        for new requests; those in flight finish as they started.
        """


@frozen
class Loaded:
    """
    A configuration as read: its options and its listening endpoints.
    """

    config: ProxyConfig
    listen: tuple[str, ...]


@define
class Reloader:
    """
    Re-reads the configuration and hands it to the registered parts.

    @ivar current: the configuration in use (the last good one).
    @ivar path: the C{--config} file, or L{None}.
    @ivar loaded_at: clock time when C{current} was loaded.
    """

    log = Logger()

    _load: Callable[[], Loaded]
    current: Loaded
    path: str | None
    _clock: IReactorTime
    loaded_at: float = field(default=0.0)
    _parts: list[Reloadable] = field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self.loaded_at = self._clock.seconds()

    def register(self, part: Reloadable) -> None:
        """
        Give C{part} every configuration reloaded from now on.
        """
        self._parts.append(part)

    def reload(self) -> bool:
        """
        Re-read the configuration and apply it.

        @return: whether it was valid (and applied).
        """
        where = self.path or "the command line"
        try:
            loaded = self._load()
        except (ConfigError, UsageError) as e:
            self.log.error("Configuration not reloaded, nothing changed: {why}", why=str(e), path=where)
            return False
        config = self._keep_restart_only(loaded)
        for part in self._parts:
            try:
                part.reconfigure(config)
            except Exception:  # a bug in one part: the others still get the configuration
                self.log.failure("Reload failed in {part!r}", part=part)
        self.current = Loaded(config, self.current.listen)
        self.loaded_at = self._clock.seconds()
        self.log.info("Configuration reloaded from {path}", path=where)
        return True

    def _keep_restart_only(self, loaded: Loaded) -> ProxyConfig:
        old, new = self.current.config, loaded.config
        kept: dict[str, Any] = {}
        if loaded.listen != self.current.listen:
            self._needs_restart("--listen", list(self.current.listen))
        for attribute in attrs.fields(ProxyConfig):
            name = attribute.name
            if name not in RELOADABLE and getattr(old, name) != getattr(new, name):
                kept[name] = getattr(old, name)
                self._needs_restart("--" + name.replace("_", "-"), kept[name])
        return attrs.evolve(new, **kept) if kept else new

    def _needs_restart(self, option: str, kept: object) -> None:
        self.log.warn(
            "{option} changed: needs a restart (still {kept!r} until then)", option=option, kept=kept
        )

    def snapshot(self) -> dict[str, Any]:
        """
        The last good configuration's file and load time, for the status page.
        """
        return {"path": self.path, "loadedAt": self.loaded_at}


class ReloadOnHangup(Service):
    """
    Calls C{on_hangup} in the reactor's thread for each SIGHUP while running.
    """

    def __init__(self, reactor: Any, on_hangup: Callable[[], object]) -> None:
        self._reactor = reactor
        self._on_hangup = on_hangup
        self._previous: Any = None

    def startService(self) -> None:
        Service.startService(self)
        self._previous = signal.signal(signal.SIGHUP, self._received)

    def _received(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self._on_hangup)

    def stopService(self) -> None:
        Service.stopService(self)
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
