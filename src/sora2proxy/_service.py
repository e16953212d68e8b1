"""
L{build_service}: the whole proxy of C{twistd sora2proxy} as one service,
its ports bound: the public listeners, the proxy, the C{--spawn}
children, the admin port, and the SIGHUP reload (or, with C{--workers},
the workers, to which the parent passes SIGHUP).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.logger import ILogObserver

from ._config import ProxyConfig
from ._proxy import Proxy, build_proxy
from .http._site import ProxySite, QuietSite
from .ops._access_log import FileSink
from .ops._lifecycle import DrainingListeners, ExitOnce, StopInOrder
from .ops._listening import STARTUP_FAILED, listen_now, listen_shared_now
from .ops._logs import JSONLinesObserver
from .ops._reload import Loaded, Reloader, ReloadOnHangup
from .ops._reopen import ReopenOnSignal
from .ops._spawn import SpawnedCommand
from .ops._workers import sora2proxy_args, worker_command


def build_service(
    config: ProxyConfig,
    listen: list[str],
    reactor: Any,
    load: Callable[[], Loaded] | None = None,
    path: str | None = None,
    log_file: str | None = None,
) -> IService:
    """
    The whole proxy as one service, its ports already bound.  Its children stop one after another,
    last first: the public listeners drain, then the proxy (health monitors,
    pool), then the spawned commands, then the admin port (which answers
    C{/ready} 503 throughout the drain).

    @param load: re-reads the configuration for a reload (SIGHUP); by
        default the same configuration again.
    @param path: the C{--config} file, for the status page and the log.
    @param log_file: where twistd writes its log (L{None}: standard output).
    @raise ConfigError: a port cannot be bound.
    """
    top = _Top(JSONLinesObserver.to(log_file) if config.log_format == "json" else None)
    if top.observer is not None and log_file is not None:
        ReopenOnSignal(top.observer, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    if config.workers > 1 and config.worker_index is None:
        _workers(config, reactor, top)
        return top
    children = [SpawnedCommand(spec, reactor) for spec in config.spawn]
    proxy = build_proxy(config, reactor, children=children)
    reloader = _reloader(proxy, Loaded(config, tuple(listen)), load, path, reactor, top)
    if config.admin_listen is not None:
        # Klein imports the global reactor: only here, after twistd installed it.
        from .ops._admin import Admin

        admin = Admin(proxy.telemetry, proxy.balancer)
        admin_site = QuietSite(admin.resource(), reactor=reactor)
        listen_now("--admin-listen", config.admin_listen, reactor, admin_site).setServiceParent(top)
    for child in children:
        child.setServiceParent(top)  # type: ignore[no-untyped-call]
    proxy.service.setServiceParent(top)
    if isinstance(proxy.access, FileSink) and proxy.access.path is not None:
        ReopenOnSignal(proxy.access, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    listeners = DrainingListeners(proxy.telemetry, reactor, config.drain_timeout)
    site = ProxySite(proxy.resource, config, reactor=reactor, refusals=proxy.refusals)
    bind = listen_now if config.worker_index is None else listen_shared_now
    reloader.register(site)
    for description in listen:
        bind("--listen", description, reactor, site).setServiceParent(listeners)
    listeners.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top


def _reloader(
    proxy: Proxy, loaded: Loaded, load: Callable[[], Loaded] | None, path: str | None, reactor: Any, top: _Top
) -> Reloader:
    """
    The SIGHUP reload of C{proxy}, shown on its status page.
    """
    reloader = Reloader(load or (lambda: loaded), loaded, path, reactor)
    reloader.register(proxy)
    proxy.telemetry.sections["config"] = reloader.snapshot
    ReloadOnHangup(reactor, reloader.reload).setServiceParent(top)  # type: ignore[no-untyped-call]
    return reloader


def _workers(config: ProxyConfig, reactor: Any, top: _Top) -> None:
    """
    The parent of C{--workers}: the workers, to which it passes SIGHUP
    (each re-reads the configuration itself), and the C{--spawn} children.
    """
    # A worker that cannot bind exits with STARTUP_FAILED: then the parent stops too.
    fatal = ExitOnce(reactor)
    workers = []
    for index in range(config.workers):
        # Each worker writes where the parent's default put the access lines (resolved here).
        argv = [*sora2proxy_args(sys.argv), "--access-log", config.access_log]
        command = worker_command(argv, index, config.admin_listen)
        worker = SpawnedCommand(command, reactor, fatal_status=STARTUP_FAILED, on_fatal=fatal)
        worker.setServiceParent(top)  # type: ignore[no-untyped-call]
        workers.append(worker)
    passed_on = ReloadOnHangup(reactor, lambda: _hangup(workers))
    passed_on.setServiceParent(top)  # type: ignore[no-untyped-call]
    for spec in config.spawn:
        SpawnedCommand(spec, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]


def _hangup(workers: list[SpawnedCommand]) -> None:
    for worker in workers:
        worker.hangup()


class _Top(StopInOrder):
    """
    The service twistd runs; with C{--log-format json} it gives the
    application a JSON-lines log observer (twistd's hook for one), writing
    where twistd would write its log.
    """

    def __init__(self, observer: JSONLinesObserver | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.observer = observer

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self.observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.observer)
