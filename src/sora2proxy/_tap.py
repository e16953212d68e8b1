"""
The twistd plugin's options and service: C{twistd -n sora2proxy [options]}.

This is the only module that picks the real reactor (lazily, in
L{makeService}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from ._config import (
    DEFAULT_IDENTITY_HEADERS,
    ConfigError,
    ProxyConfig,
    UnreadableFile,
    upstream_from_environment,
)
from ._service import build_service
from .ops._access_log import default_access_log, twistd_log_file
from .ops._config_file import arguments_from_file
from .ops._lifecycle import FrozenStartup
from .ops._listening import check_port_range, exit_at_startup
from .ops._reload import Loaded
from .ops._workers import reuseport_tcp


def _number(option: str, text: str, kind: type[float] | type[int] = float) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(option, f"must be {what}, got {text!r}") from None


#: The options taken as they are written, each the L{ProxyConfig} field of its name.
_WORDS = (
    "prefix",
    "health-path",
    "suggestion",
    "balance",
    "upstream-ca",
    "log-format",
    "access-log",
    "idempotency-store",
    "rate-limit-store",
    "sse-errors",
)
#: The flags, each the L{ProxyConfig} field of its name.
_FLAGS = (
    "dev",
    "retry-all-methods",
    "jitter",
    "preserve-host",
    "allow-underscore-headers",
    "idempotency-fail-closed",
    "rate-limit-fail-closed",
)
#: The numbers, each the L{ProxyConfig} field of its name, in the order they are checked.
_NUMBERS: tuple[tuple[str, type[float] | type[int]], ...] = (
    ("health-interval", float),
    ("health-timeout", float),
    ("attempts", int),
    ("backoff", float),
    ("timeout", float),
    ("deadline", float),
    ("max-backoff", float),
    ("max-retry-after", float),
    ("retry-budget", float),
    ("eject-after", int),
    ("eject-time", float),
    ("max-body", int),
    ("drain-timeout", float),
    ("workers", int),
    ("worker-index", int),
    ("max-inflight", int),
    ("header-timeout", float),
    ("idle-timeout", float),
    ("h2-max-streams", int),
    ("upstream-idle-timeout", float),
    ("tunnel-idle-timeout", float),
    ("idempotency-ttl", float),
    ("idempotency-max-body", int),
    ("idempotency-max-entries", int),
    ("idempotency-max-bytes", int),
    ("idempotency-max-per-caller", int),
)


def _field(option: str) -> str:
    return option.replace("-", "_")


class Options(usage.Options):
    """
    Command-line options of C{twistd sora2proxy}.
    """

    synopsis = "[options]"
    longdesc = (
        "Forward METHOD PREFIX/rest?query to METHOD UPSTREAM/rest?query, with health checks, "
        "safe retries and JSON errors that say how to fix the problem."
    )
    optFlags = [
        ["dev", None, "Show tracebacks in 500 error bodies (never otherwise)."],
        ["jitter", None, "Full jitter: each backoff wait is uniform in [0, BACKOFF*k]."],
        ["preserve-host", None, "Send the client's Host header upstream instead of the upstream's."],
        ["allow-underscore-headers", None, "Forward request headers whose names hold '_' (dropped)."],
        ["idempotency-fail-closed", None, "Answer 503 when the idempotency store cannot be reached."],
        ["rate-limit-fail-closed", None, "Answer 503 when the rate-limit store cannot be reached."],
        [
            "retry-all-methods",
            None,
            "Retry every method after any failure, even a POST the backend may already "
            "have acted on (unsafe: can run a job twice).",
        ],
    ]
    optParameters = [
        [
            "prefix",
            None,
            "/api/proxy",
            "Public path prefix, stripped before forwarding; '/' mounts at the root.",
        ],
        [
            "health-path",
            None,
            "/api/health",
            "Health-check path on the upstream's origin; '' disables checks.",
        ],
        ["health-interval", None, "5", "Seconds between health checks."],
        ["health-timeout", None, "3", "Seconds a health check may take."],
        ["attempts", None, "3", "Total tries per request, the first included."],
        ["backoff", None, "1", "The wait before try k+1 is BACKOFF*k seconds."],
        ["timeout", None, "30", "Seconds one try may take to get response headers."],
        ["suggestion", None, "Run: npm run dev:api", "The how-to-fix line in error bodies."],
        ["deadline", None, "0", "Seconds for a whole request, tries and waits included; 0 is off."],
        ["max-backoff", None, "30", "Cap on one backoff wait, in seconds."],
        ["max-retry-after", None, "10", "Longest upstream Retry-After the proxy waits for before retrying."],
        ["retry-budget", None, "0.2", "Retries allowed per request over a 10 s window (at least 5/s)."],
        ["balance", None, "round-robin", "round-robin or least-in-flight, across several --upstream."],
        ["eject-after", None, "5", "Consecutive failures that eject an upstream for a cool-down; 0 is off."],
        ["max-body", None, str(100 * 1024 * 1024), "Largest request body forwarded, in bytes (413 above)."],
        ["upstream-ca", None, None, "PEM file of CA certificates trusted for https upstreams."],
        [
            "admin-listen",
            None,
            "tcp:9901:interface=127.0.0.1",
            "Admin endpoint (health, ready, metrics, status); 'none' disables.",
        ],
        ["log-format", None, "text", "text, or json for JSON lines."],
        [
            "access-log",
            None,
            None,
            "Access lines: - (stdout), a file path (buffered, reopened on SIGUSR1), log "
            "(twisted.logger events), or off [default: stdout under twistd -n, else access.log "
            "beside twistd's --logfile].",
        ],
        ["workers", None, "1", "Processes serving the public TCP ports (SO_REUSEPORT): one per core."],
        ["worker-index", None, None, "Set by the parent of --workers in each worker; not for people."],
        ["max-inflight", None, "1000", "Requests handled at once; more get 503 OVERLOADED at once."],
        [
            "header-timeout",
            None,
            "10",
            "Seconds a client may take to send its request headers (0: no limit).",
        ],
        ["idle-timeout", None, "60", "Seconds an idle client connection is kept open (0: no limit)."],
        ["h2-max-streams", None, "100", "Concurrent streams of one HTTP/2 client connection (TLS)."],
        [
            "upstream-idle-timeout",
            None,
            "4",
            "Seconds an idle upstream connection is kept for reuse (below the backend's keep-alive timeout).",
        ],
        [
            "tunnel-idle-timeout",
            None,
            "300",
            "Seconds a WebSocket tunnel with no bytes either way is kept open (0: no limit).",
        ],
        ["idempotency-store", None, "memory", "memory, off, or redis://HOST:PORT/DB (shared)."],
        ["idempotency-ttl", None, "86400", "Seconds a stored answer is replayed."],
        ["idempotency-max-body", None, str(1024 * 1024), "Largest answer body stored for replay, in bytes."],
        ["idempotency-max-entries", None, "10000", "Entries the memory store keeps at most."],
        ["idempotency-max-bytes", None, str(64 * 1024 * 1024), "Bytes the memory store keeps at most."],
        ["idempotency-max-per-caller", None, "1000", "Idempotency entries one caller keeps at most."],
        ["rate-limit-store", None, "memory", "memory (per process) or redis://HOST:PORT/DB (shared)."],
        ["sse-errors", None, "event-stream", "event-stream: an EventSource gets errors as an event; plain."],
        ["drain-timeout", None, "10", "Seconds requests in flight get to finish on shutdown."],
        ["eject-time", None, "30", "First cool-down of an ejected upstream (doubles, up to 300 s)."],
        ["config", None, None, "TOML file of options (command line and environment win); re-read on SIGHUP."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None, *, strict: bool = False) -> None:
        """
        @param strict: raise L{ConfigError} for a bad value (a reload) rather than exit.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.environ = self._environ = os.environ if environ is None else environ
        self._strict = strict
        self.argv: list[str] = []
        self["listen"] = []
        self["upstream"] = []
        self["spawn"] = []
        self["require-idempotency-key"] = []
        self["identity-header"] = []
        self["rate-limit"] = []
        self["max-concurrent"] = []
        self.config: ProxyConfig | None = None

    def opt_listen(self, endpoint: str) -> None:
        """
        Twisted server endpoint to listen on (repeatable) [default: tcp:3200].
        """
        self["listen"].append(endpoint)

    def opt_upstream(self, url: str) -> None:
        """
        Backend base URL, base path included; repeatable [default: $SORA2PROXY_UPSTREAM, else $NEXT_PUBLIC_API_URL/api, else http://localhost:3101/api].
        """  # noqa: E501
        self["upstream"].append(url)

    def opt_spawn(self, command: str) -> None:
        """
        Run COMMAND (or NAME=COMMAND) as a child process: its output is logged under its name, it is restarted if it dies and stopped with the proxy (repeatable).
        """  # noqa: E501
        self["spawn"].append(command)

    def opt_require_idempotency_key(self, rule: str) -> None:
        """
        METHOD:PATH-PATTERN (e.g. POST:/videos, after the prefix) whose requests must carry an Idempotency-Key (repeatable).
        """  # noqa: E501
        self["require-idempotency-key"].append(rule)

    def opt_rate_limit(self, rule: str) -> None:
        """
        METHOD:PATH-PATTERN=N/PERIOD (PERIOD s, m or h; e.g. POST:/videos=10/m): N such requests per caller per period, in a burst of up to N (repeatable).
        """  # noqa: E501
        self["rate-limit"].append(rule)

    def opt_max_concurrent(self, rule: str) -> None:
        """
        METHOD:PATH-PATTERN=N (e.g. POST:/videos=2): at most N such requests of one caller in flight (repeatable).
        """  # noqa: E501
        self["max-concurrent"].append(rule)

    def opt_identity_header(self, name: str) -> None:
        """
        A header whose value identifies the caller, for Idempotency-Key scopes and limits; repeatable [default: $SORA2PROXY_IDENTITY_HEADERS (comma-separated), else Authorization, Cookie and X-Api-Key].
        """  # noqa: E501
        self["identity-header"].append(name)

    def _identity_headers(self) -> tuple[str, ...]:
        if self["identity-header"]:
            return tuple(self["identity-header"])
        listed = self._environ.get("SORA2PROXY_IDENTITY_HEADERS", "")
        return tuple(n.strip() for n in listed.split(",") if n.strip()) or DEFAULT_IDENTITY_HEADERS

    def parseOptions(self, options: list[str] | None = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(self.argv)  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        if self._strict:
            self._check()
            return
        try:
            self._check()
        except UnreadableFile as e:
            exit_at_startup(e)  # one line, status 78, as for a port that cannot be bound
        except (ConfigError, usage.UsageError) as e:
            # One line naming the option, not twistd's usage text or a traceback.
            raise SystemExit(f"sora2proxy: error: {e}") from None

    def _check(self) -> None:
        """
        Read the C{--config} file, then validate everything.

        @raise ConfigError: a bad value.
        """
        if self["config"] is not None and not self.get("from-file"):
            self._merge_file(self["config"])
            return
        self.config = self.to_config()
        for endpoint in self.listen:
            _check_endpoint(endpoint)
        if self.config.workers > 1 or self.config.worker_index is not None:
            for endpoint in self.listen:
                reuseport_tcp(endpoint)
        if self.config.admin_listen is not None:
            _check_endpoint(self.config.admin_listen, "--admin-listen")
            if self.config.admin_listen in self.listen and not _any_port(self.config.admin_listen):
                raise ConfigError("--admin-listen", "must not be one of the public --listen endpoints")

    def _merge_file(self, path: str) -> None:
        """
        Parse the file's options followed by the command line's (the last
        value of an option wins), in an L{Options} whose values become these.
        """
        arguments = arguments_from_file(path, self, self._environ, starting=not self._strict)
        merged = Options(self._environ, strict=True)
        merged["from-file"] = True
        merged.parseOptions([*arguments, *self.argv])
        argv = self.argv
        self.update(merged)
        self.config, self.argv = merged.config, argv

    @property
    def listen(self) -> list[str]:
        """
        The listening endpoints, with the default when none was given.
        """
        return list(self["listen"]) or ["tcp:3200"]

    def to_config(self) -> ProxyConfig:
        """
        @return: the validated configuration.
        @raise ConfigError: for a bad value.
        """
        upstream = tuple(self["upstream"]) or (upstream_from_environment(self._environ),)
        return ProxyConfig(
            upstream=upstream,
            **self._fields(),
            admin_listen=None if self["admin-listen"] in ("none", "") else self["admin-listen"],
            spawn=tuple(self["spawn"]),
            require_idempotency_key=tuple(self["require-idempotency-key"]),
            identity_headers=self._identity_headers(),
            rate_limit=tuple(self["rate-limit"]),
            max_concurrent=tuple(self["max-concurrent"]),
            access_log=self["access-log"] or default_access_log(self.parent),
        )

    def _fields(self) -> dict[str, Any]:
        """
        The words, flags and numbers, each under its L{ProxyConfig} field's
        name; the first bad number (in L{_NUMBERS}' order) is the one named.
        """
        fields: dict[str, Any] = {_field(option): self[option] for option in _WORDS}
        del fields["access_log"]  # to_config's, with its default
        fields.update({_field(option): bool(self[option]) for option in _FLAGS})
        for option, kind in _NUMBERS:
            text = self[option]
            fields[_field(option)] = None if text is None else _number(f"--{option}", text, kind)
        return fields


def _any_port(description: str) -> bool:
    """
    Whether C{description} asks for a port the system picks (C{tcp:0...}).
    """
    parts = description.split(":")
    return len(parts) > 1 and parts[0] in ("tcp", "tcp6", "ssl") and parts[1] in ("0", "port=0")


def _check_endpoint(description: str, option: str = "--listen") -> None:
    check_port_range(option, description)
    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, KeyError, TypeError, OSError, ImportError, IndexError) as e:
        raise ConfigError(option, f"{description!r} is not a usable endpoint ({e})") from None


def reread(argv: list[str], environ: Mapping[str, str], twistd: Any = None) -> Loaded:
    """
    C{argv} and C{environ} read again (the C{--config} file too), for a reload.

    @raise ConfigError: a bad value.
    @raise usage.UsageError: a bad command line.
    """
    options = Options(environ, strict=True)
    options.parent = twistd  # the default access log is where twistd logs, as at the start
    options.parseOptions(argv)
    assert options.config is not None
    return Loaded(options.config, tuple(options.listen))


def makeService(options: Options) -> IService:
    """The twistd entry point; the objects alive once it starts are frozen (L{FrozenStartup})."""
    from twisted.internet import reactor

    assert options.config is not None
    config, listen, twistd = options.config, options.listen, options.parent
    load = partial(reread, options.argv, options.environ, twistd)
    try:
        service = build_service(config, listen, reactor, load, options["config"], twistd_log_file(twistd))
    except (ValueError, OSError) as e:  # ConfigError for a port that cannot be bound
        exit_at_startup(e)
    FrozenStartup().setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
