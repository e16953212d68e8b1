"""
C{--workers N}: one process per core.  The parent runs no proxy of its own:
it starts N workers (each a whole proxy with its own health monitors) under
the C{--spawn} machinery (output prefixed, restarted with backoff, stopped
with the parent, never orphaned); a worker that cannot bind its port exits
78 and stops the parent (L{sora2proxy.ops._listening}).  Workers share each public TCP port
through C{SO_REUSEPORT}: the kernel spreads connections across them.  The
admin port is served by worker 0.
"""

from __future__ import annotations

import re
import shlex
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from .._config import ConfigError

#: Options the parent keeps for itself.
_PARENT_ONLY = {"--workers", "--spawn", "--admin-listen"}


def worker_argv(argv: Sequence[str], index: int, admin_listen: str | None) -> list[str]:
    """
    The command line of worker C{index}: the parent's sora2proxy options,
    less C{--workers} and C{--spawn}, plus C{--worker-index}; only worker 0
    keeps the admin port.
    """
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _PARENT_ONLY:
            skip = "=" not in arg
            continue
        kept.append(arg)
    admin = admin_listen if index == 0 and admin_listen else "none"
    twistd = "from twisted.scripts.twistd import run; run()"
    return [sys.executable, "-c", twistd, "--nodaemon", "--pidfile=", "sora2proxy", *kept,
            "--admin-listen", admin, "--worker-index", str(index)]  # fmt: skip


def sora2proxy_args(argv: Sequence[str]) -> list[str]:
    """
    The arguments after the C{sora2proxy} subcommand in twistd's command line.
    """
    for position, arg in enumerate(argv):
        if arg == "sora2proxy":
            return list(argv[position + 1 :])
    return []


def worker_command(argv: Sequence[str], index: int, admin_listen: str | None) -> str:
    """
    The worker's command for L{sora2proxy.ops._spawn.SpawnedCommand} (C{NAME=COMMAND}),
    run by C{exec}: the worker is its process group's only process, so a
    SIGHUP passed on reaches it alone (the shell would die of it).
    """
    return f"worker-{index}=exec " + shlex.join(worker_argv(argv, index, admin_listen))


def reuseport_tcp(description: str) -> tuple[str, int]:
    """
    The interface and port of a C{tcp:} endpoint description, for C{SO_REUSEPORT}.

    @raise ConfigError: for another endpoint type (only TCP is shared).
    """
    parts = re.split(r"(?<!\\):", description)  # colons escaped as \: belong to values
    if parts[0] not in ("tcp", "tcp6"):
        raise ConfigError("--workers", f"workers share TCP ports only, not {description!r}")
    port = None
    interface = "::" if parts[0] == "tcp6" else "0.0.0.0"
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part.split("=", 1)[1].replace("\\:", ":")
        elif part.startswith("port="):
            port = int(part.split("=", 1)[1])
        elif part.isdigit() and port is None:
            port = int(part)
    if not port:
        raise ConfigError("--workers", f"workers need a fixed port, not {description!r}")
    return interface, port


def listen_reuseport(reactor: Any, description: str, factory: Any) -> IListeningPort:
    """
    Listen on a TCP port that other workers share (C{SO_REUSEPORT}).

    @raise CannotListenError: the port cannot be bound.
    """
    interface, port = reuseport_tcp(description)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((interface, port))
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    sock.listen(1024)
    sock.setblocking(False)
    try:
        listening: IListeningPort = reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate
    return listening
