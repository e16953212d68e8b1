"""
L{ProxyConfig}: every option of the proxy, its default and its validation.

A bad value raises L{ConfigError}, whose message is one line naming the
command-line option.  This module imports only L{sora2proxy._rules} of the package.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from attrs import field, frozen
from hyperlink import URL

from ._rules import path_rule, rate_rule, slots_rule

DEFAULT_UPSTREAM = "http://localhost:3101/api"
#: The headers that identify a caller when no C{--identity-header} is given.
DEFAULT_IDENTITY_HEADERS = ("Authorization", "Cookie", "X-Api-Key")


class ConfigError(ValueError):
    """
    A configuration value is invalid; C{str()} is one line naming the option.
    """

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


class UnreadableFile(ConfigError):
    """
    A file an option names cannot be read: a start-up failure (exit 78),
    not a bad value.
    """


def option_name(attribute: attrs.Attribute[Any]) -> str:
    """
    @return: the command-line spelling of a L{ProxyConfig} field.
    """
    return "--" + attribute.name.replace("_", "-")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(option_name(attribute), f"must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(option_name(attribute), f"must be a positive number, got {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(option_name(attribute), f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(option_name(attribute), f"must be zero or more, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(option_name(attribute), f"must be a whole number of 1 or more, got {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _not_negative(_, attribute, value)
    if value > 1:
        raise ConfigError(option_name(attribute), f"must be between 0 and 1, got {value!r}")


def _no_controls(option: str, value: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(option, "must not contain control characters")


def _valid_upstream(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    option = "--upstream"
    if not isinstance(value, str) or not value:
        raise ConfigError(option, "must be a URL such as http://localhost:3101/api")
    _no_controls(option, value)
    try:
        url = URL.from_text(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(option, f"{value!r} is not a URL ({e})") from None
    if url.scheme not in ("http", "https") or not value.lower().startswith(url.scheme + "://"):
        raise ConfigError(option, f"{value!r} needs a scheme: http:// or https://")
    if not url.host:
        raise ConfigError(option, f"{value!r} has no host")
    if url.userinfo:
        raise ConfigError(option, f"{value!r}: credentials in the URL are not supported")
    if url.query or url.fragment:
        raise ConfigError(option, f"{value!r}: a base URL takes no query or fragment")
    try:
        port = url.port
    except ValueError:
        port = None
    if port is None or not 0 < port < 65536:
        raise ConfigError(option, f"{value!r} has an invalid port")
    try:
        ascii_url(value).to_text().encode("ascii")
    except (ValueError, UnicodeError) as e:
        raise ConfigError(option, f"{value!r} has an invalid host ({e})") from None


def ascii_url(text: str) -> URL:
    """
    Parse C{text} and encode it as ASCII: IDNA for a host name, percent-escapes
    for the path; an IP literal (IPv6 included) is kept as it is.
    """
    url = URL.from_text(text)
    if ":" in url.host or all(part.isdigit() for part in url.host.split(".")):
        return url.replace(host="ip.invalid").to_uri().replace(host=url.host)
    return url.to_uri()


def _valid_path(option: str, value: str, *, allow_empty: bool) -> None:
    if allow_empty and value == "":
        return
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(option, f"must start with '/', got {value!r}")
    _no_controls(option, value)
    if not value.isascii():
        raise ConfigError(option, f"must be ASCII (percent-encode other characters), got {value!r}")
    if "?" in value or "#" in value or " " in value:
        raise ConfigError(option, f"must be a plain path, got {value!r}")


def _valid_prefix(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    _valid_path("--prefix", value, allow_empty=False)


def _valid_health_path(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    _valid_path("--health-path", value, allow_empty=True)


def _valid_text(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(option_name(attribute), f"must be text, got {value!r}")


def _as_upstreams(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _valid_upstreams(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigError("--upstream", "needs at least one URL")
    for url in value:
        _valid_upstream(_, attribute, url)
    if len(set(value)) != len(value):
        raise ConfigError("--upstream", "the same URL is given twice")


def _whole_not_negative(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(option_name(attribute), f"must be a whole number of 0 or more, got {value!r}")


BALANCE_CHOICES = ("round-robin", "least-in-flight")
LOG_FORMATS = ("text", "json")


def _valid_store(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    option, words = option_name(attribute), ("memory", "off")[: 2 if attribute.name[0] == "i" else 1]
    if value in words:
        return
    if not isinstance(value, str) or not value.startswith("redis://"):
        raise ConfigError(option, f"must be {', '.join(words)} or redis://HOST:PORT/DB, got {value!r}")
    url = URL.from_text(value)
    if not url.host or (url.path and url.path[0] and not url.path[0].isdigit()):
        raise ConfigError(option, f"{value!r} is not redis://HOST:PORT/DB")


def _rules_of(parse: Callable[[str], object]) -> Callable[[object, Any, tuple[str, ...]], None]:
    def valid(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for rule in value:
            try:
                parse(rule)
            except ValueError as e:
                raise ConfigError(option_name(attribute), str(e)) from None

    return valid


_valid_rules = _rules_of(path_rule)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _valid_identity_headers(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigError("--identity-header", "needs at least one header name")
    for name in value:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError("--identity-header", f"must be a header name (X-Api-Key), got {name!r}")


def _one_of(*choices: str) -> Callable[[object, attrs.Attribute[Any], str], None]:
    def valid(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ConfigError(option_name(attribute), f"must be {' or '.join(choices)}, got {value!r}")

    return valid


def _valid_access_log(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value in ("log", "off", "-"):
        return
    folder = os.path.dirname(os.path.abspath(value)) if isinstance(value, str) and value else ""
    if not folder or not os.path.isdir(folder) or os.path.isdir(value):
        raise ConfigError(
            "--access-log", f"must be log, off, - or a file in an existing directory, got {value!r}"
        )


def _valid_optional_text(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(option_name(attribute), f"must be an endpoint description, got {value!r}")


def _valid_ca(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    try:
        with open(value, "rb") as pem:
            text = pem.read()
    except OSError as e:
        raise UnreadableFile("--upstream-ca", f"cannot read {value!r} ({e.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError("--upstream-ca", f"{value!r} holds no PEM certificate")


@frozen
class ProxyConfig:
    """
    Every option of the proxy.  Values are validated on construction.

    @ivar upstreams: the backends' base URLs, base path included (the
        keyword is C{upstream=}, a URL or a sequence of URLs).
    @ivar prefix: the public path prefix, stripped before forwarding.
    @ivar health_path: the health check's path on each upstream's origin;
        empty disables health checks.
    @ivar health_interval: seconds between health checks.
    @ivar health_timeout: seconds a health check may take.
    @ivar attempts: total tries of one request, the first included.
    @ivar backoff: the wait before try k+1 is C{backoff * k} seconds.
    @ivar timeout: seconds one try may take to get response headers.
    @ivar suggestion: the how-to-fix line of error bodies.
    @ivar dev: include tracebacks in 500 bodies.
    @ivar retry_all_methods: retry any method after any failure (unsafe).
    @ivar max_retry_after: longest upstream C{Retry-After} waited for.
    @ivar deadline: seconds for the whole request, tries and waits included; 0 is off.
    @ivar jitter: full jitter on the backoff.
    @ivar max_backoff: cap on one backoff wait.
    @ivar retry_budget: retries allowed per request over a 10 s window.
    @ivar balance: C{round-robin} or C{least-in-flight}.
    @ivar eject_after: consecutive failures that eject an upstream; 0 is off.
    @ivar eject_time: first cool-down of an ejected upstream, in seconds.
    @ivar max_body: largest request body forwarded, in bytes (413 above).
    @ivar preserve_host: send the client's C{Host} upstream, not the upstream's.
    @ivar allow_underscore_headers: keep request headers whose names hold
        C{_} (dropped by default, as nginx does).
    @ivar upstream_ca: a PEM file of CA certificates trusted for https
        upstreams instead of the system's store.
    @ivar admin_listen: the admin port's endpoint, or L{None} for none.
    @ivar spawn: commands to run as child processes (C{NAME=COMMAND} or C{COMMAND}).
    @ivar log_format: C{text} or C{json} (JSON lines).
    @ivar access_log: where access lines go: C{log} (twisted.logger events),
        C{-} (standard output), a file path, or C{off}.
    @ivar drain_timeout: seconds requests in flight get to finish on shutdown.
    @ivar workers: processes serving the public ports (C{SO_REUSEPORT}).
    @ivar worker_index: set in a worker process, L{None} in the parent.
    @ivar max_inflight: requests handled at once; more get 503 C{OVERLOADED}.
    @ivar header_timeout: seconds a client may take to send a request's headers (0: no limit).
    @ivar idle_timeout: seconds an idle client connection is kept (0: no limit).
    @ivar h2_max_streams: concurrent streams an HTTP/2 client connection may open.
    @ivar upstream_idle_timeout: seconds an idle upstream connection is kept for reuse (below
        the backend's keep-alive timeout: it never closes one as a request is sent on it).
    @ivar tunnel_idle_timeout: seconds a silent WebSocket tunnel is kept open (0: no limit).
    @ivar idempotency_store: C{memory}, C{off}, or C{redis://HOST:PORT/DB}.
    @ivar idempotency_ttl: seconds a stored answer is replayed.
    @ivar idempotency_max_body: largest answer body stored, in bytes.
    @ivar idempotency_max_entries: entries the memory store keeps at most.
    @ivar idempotency_max_bytes: bytes the memory store keeps at most.
    @ivar idempotency_fail_closed: answer 503 when the store cannot be reached.
    @ivar require_idempotency_key: C{METHOD:PATH-PATTERN}s that must carry a key.
    @ivar idempotency_max_per_caller: entries (in flight or stored) one caller keeps at most.
    @ivar identity_headers: the headers whose values identify a caller (the
        client's address does when none is sent).
    @ivar rate_limit: C{METHOD:PATH-PATTERN=N/PERIOD}s; C{max_concurrent}: C{METHOD:PATH-PATTERN=N}s;
        C{rate_limit_store}: C{memory} or C{redis://HOST:PORT/DB}; C{sse_errors}: C{event-stream}
        (the proxy's errors to an C{EventSource} as a C{proxy-error} event) or C{plain}.
    """

    upstreams: tuple[str, ...] = field(
        default=(DEFAULT_UPSTREAM,), converter=_as_upstreams, validator=_valid_upstreams, alias="upstream"
    )
    prefix: str = field(default="/api/proxy", validator=_valid_prefix)
    health_path: str = field(default="/api/health", validator=_valid_health_path)
    health_interval: float = field(default=5.0, validator=_positive)
    health_timeout: float = field(default=3.0, validator=_positive)
    attempts: int = field(default=3, validator=_at_least_one)
    backoff: float = field(default=1.0, validator=_not_negative)
    timeout: float = field(default=30.0, validator=_positive)
    suggestion: str = field(default="Run: npm run dev:api", validator=_valid_text)
    dev: bool = False
    retry_all_methods: bool = False
    max_retry_after: float = field(default=10.0, validator=_not_negative)
    deadline: float = field(default=0.0, validator=_not_negative)
    jitter: bool = False
    max_backoff: float = field(default=30.0, validator=_positive)
    retry_budget: float = field(default=0.2, validator=_fraction)
    balance: str = field(default="round-robin", validator=_one_of(*BALANCE_CHOICES))
    eject_after: int = field(default=5, validator=_whole_not_negative)
    eject_time: float = field(default=30.0, validator=_positive)
    max_body: int = field(default=100 * 1024 * 1024, validator=_whole_not_negative)
    preserve_host: bool = False
    allow_underscore_headers: bool = False
    upstream_ca: str | None = field(default=None, validator=_valid_ca)
    admin_listen: str | None = field(default="tcp:9901:interface=127.0.0.1", validator=_valid_optional_text)
    spawn: tuple[str, ...] = field(default=(), converter=tuple)
    log_format: str = field(default="text", validator=_one_of(*LOG_FORMATS))
    access_log: str = field(default="log", validator=_valid_access_log)
    drain_timeout: float = field(default=10.0, validator=_not_negative)
    workers: int = field(default=1, validator=_at_least_one)
    worker_index: int | None = None
    max_inflight: int = field(default=1000, validator=_at_least_one)
    header_timeout: float = field(default=10.0, validator=_not_negative)
    idle_timeout: float = field(default=60.0, validator=_not_negative)
    h2_max_streams: int = field(default=100, validator=_at_least_one)
    upstream_idle_timeout: float = field(default=4.0, validator=_positive)
    tunnel_idle_timeout: float = field(default=300.0, validator=_not_negative)
    idempotency_store: str = field(default="memory", validator=_valid_store)
    idempotency_ttl: float = field(default=86_400.0, validator=_positive)
    idempotency_max_body: int = field(default=1024 * 1024, validator=_whole_not_negative)
    idempotency_max_entries: int = field(default=10_000, validator=_at_least_one)
    idempotency_max_bytes: int = field(default=64 * 1024 * 1024, validator=_at_least_one)
    idempotency_fail_closed: bool = False
    require_idempotency_key: tuple[str, ...] = field(default=(), converter=tuple, validator=_valid_rules)
    idempotency_max_per_caller: int = field(default=1000, validator=_at_least_one)
    identity_headers: tuple[str, ...] = field(
        default=DEFAULT_IDENTITY_HEADERS, converter=tuple[str, ...], validator=_valid_identity_headers
    )
    rate_limit: tuple[str, ...] = field(default=(), converter=tuple, validator=_rules_of(rate_rule))
    max_concurrent: tuple[str, ...] = field(default=(), converter=tuple, validator=_rules_of(slots_rule))
    rate_limit_store: str = field(default="memory", validator=_valid_store)
    rate_limit_fail_closed: bool = False
    sse_errors: str = field(default="event-stream", validator=_one_of("event-stream", "plain"))

    @property
    def upstream(self) -> str:
        """
        The first upstream's URL.
        """
        return self.upstreams[0]

    @property
    def prefix_bytes(self) -> bytes:
        """
        The public prefix as raw bytes, without a trailing slash (C{b""} for C{/}).
        """
        return self.prefix.rstrip("/").encode("utf-8")

    def health_url_of(self, upstream: str) -> bytes | None:
        """
        The full health-check URL of C{upstream}, or L{None} when checks are off.
        """
        if not self.health_path:
            return None
        url = ascii_url(upstream)
        origin = f"{url.scheme}://{url.authority()}"
        return (origin + self.health_path).encode("ascii", "strict")


def base_of(upstream: str) -> bytes:
    """
    The upstream's origin and base path without a trailing slash: the
    forwarded URL is this plus the client's path.
    """
    return ascii_url(upstream).to_text().rstrip("/").encode("ascii")


def upstream_from_environment(environ: Mapping[str, str]) -> str:
    """
    The default upstream: C{$SORA2PROXY_UPSTREAM}, else C{$NEXT_PUBLIC_API_URL}
    plus C{/api}, else C{http://localhost:3101/api}.
    """
    if environ.get("SORA2PROXY_UPSTREAM"):
        return environ["SORA2PROXY_UPSTREAM"]
    if environ.get("NEXT_PUBLIC_API_URL"):
        return environ["NEXT_PUBLIC_API_URL"].rstrip("/") + "/api"
    return DEFAULT_UPSTREAM
