"""
Where each request's access line goes (C{--access-log}): through
C{twisted.logger} (C{log}, every observer sees it as an event), straight to
a file or to standard output (C{PATH}, C{-}: buffered and written a few
times a second, with a timestamp formatted once a second), or nowhere
(C{off}).

Every field is escaped before it reaches any sink (by its producer, with
L{sora2proxy.forward._seams.escaped}): a request target's control bytes can
never split or forge an access line.

The direct writer exists for speed: twistd's text observer formats each
event's time and format string, which cost more than proxying the request
(C{bench/access_sinks.py}); nginx and Envoy write their access logs the
same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .._config import ProxyConfig, UnreadableFile
from ..forward._seams import AccessSink

#: Seconds between writes of the buffered lines.
FLUSH_EVERY = 0.05
#: Lines buffered before a write regardless of the timer.
FLUSH_LINES = 512


class LoggerSink:
    """
    Access lines as C{twisted.logger} events (namespace C{sora2proxy.access}).
    """

    log = Logger(namespace="sora2proxy.access")
    wants_fields = True

    def record(self, line: str, fields: dict[str, Any]) -> None:
        self.log.info("{access}", access=line, **fields)


class NoSink:
    """
    C{--access-log off}.
    """

    wants_fields = False

    def record(self, line: str, fields: dict[str, Any]) -> None:
        pass


class FileSink(Service):
    """
    Access lines written to a file (or standard output), buffered: a write
    every L{FLUSH_EVERY} seconds or L{FLUSH_LINES} lines, and at stop.  Once
    stopped, each line is written at once (a request that ends during the
    shutdown still gets its line).

    @param json_lines: one JSON object a line (the fields of C{--log-format
        json}'s access events) instead of text.
    @param path: the file C{out} was opened from, for appending: the sink
        owns C{out} (closed at stop) and L{reopen} opens C{path} again.
    """

    log = Logger()

    def __init__(
        self, out: IO[str], clock: IReactorTime, json_lines: bool = False, path: str | None = None
    ) -> None:
        self._out: IO[str] | None = out
        self._clock = clock
        self._json = self.wants_fields = json_lines  # text lines are the line alone
        self._path = path
        self._lines: list[str] = []
        self._timer: IDelayedCall | None = None
        self._second = -1
        self._stamp = ""
        self._stopped = False

    @property
    def path(self) -> str | None:
        """
        The file's path, L{None} for standard output.
        """
        return self._path

    def record(self, line: str, fields: dict[str, Any]) -> None:
        now = self._clock.seconds()
        if self._json:
            text = json.dumps(
                {"time": now, "level": "info", "namespace": "sora2proxy.access", "message": line, **fields}
            )
        else:
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            text = f"{self._stamp} [sora2proxy.access] {line}"
        self._lines.append(text)
        if self._stopped or len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """
        Write the buffered lines now, in one write.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        text = "\n".join(lines) + "\n"
        try:
            if self._out is None:  # a line after stop: the owned file was closed
                assert self._path is not None
                with open(self._path, "a", encoding="utf-8") as late:
                    late.write(text)
            else:
                self._out.write(text)
                self._out.flush()
        except (OSError, ValueError) as e:
            self.log.error("access log: {count} lines not written: {error}", count=len(lines), error=e)

    def reopen(self) -> None:
        """
        Write the buffered lines to the file open now, then open the file's
        path again (C{logrotate} renamed it): the next lines go to a new
        file.  If it cannot be opened, the old one is kept.
        """
        self.flush()
        if self._path is None or self._out is None:
            return
        try:
            mode = os.fstat(self._out.fileno()).st_mode & 0o777
            created = not os.path.exists(self._path)  # logrotate's create made none
            fresh = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (kept until the next reopen)
            if created:  # the old file's mode, not the umask of a daemon (0077)
                os.fchmod(fresh.fileno(), mode)
        except OSError as e:
            self.log.error(
                "access log: cannot reopen {path} ({error}); still writing to the old file",
                path=self._path,
                error=e.strerror,
            )
            return
        old, self._out = self._out, fresh
        old.close()

    def stopService(self) -> None:
        Service.stopService(self)
        self.flush()
        self._stopped = True
        if self._path is not None and self._out is not None:
            self._out.close()
            self._out = None


def default_access_log(twistd: Mapping[str, Any] | None) -> str:
    """
    Where access lines go with no C{--access-log}: where twistd writes its
    own log (C{twistd}: its options, L{None} outside twistd).  Standard
    output when twistd logs there (C{-n} without C{--logfile}), else
    C{access.log} in the folder of twistd's log file (C{twistd.log} in the
    current folder when daemonised without C{--logfile}); C{log} events
    with C{--syslog}; C{off} with C{--logfile /dev/null}.
    """
    if twistd is not None and twistd.get("syslog"):
        return "log"
    logfile = twistd_log_file(twistd)
    if logfile is None:
        return "-"
    if logfile == os.devnull:  # twistd's log thrown away: the access lines too
        return "off"
    return os.path.join(os.path.dirname(logfile), "access.log")


def twistd_log_file(twistd: Mapping[str, Any] | None) -> str | None:
    """
    The file twistd writes its log to (an absolute path, taken before
    twistd changes folder), or L{None} for standard output (C{-n} without
    C{--logfile}, or outside twistd).
    """
    if twistd is None:
        return None
    logfile = twistd.get("logfile")
    if logfile == "-" or (not logfile and (twistd.get("nodaemon") or twistd.get("debug"))):
        return None
    return os.devnull if logfile == os.devnull else os.path.abspath(logfile or "twistd.log")


def access_sink(config: ProxyConfig, clock: IReactorTime) -> AccessSink:
    """
    The sink of C{--access-log}: C{log}, C{off}, C{-} (standard output) or a
    file path (opened for appending); JSON lines with C{--log-format json}.
    """
    where, json_lines = config.access_log, config.log_format == "json"
    if where == "log":
        return LoggerSink()
    if where == "off":
        return NoSink()
    if where == "-":
        return FileSink(sys.stdout, clock, json_lines)
    try:
        out = open(where, "a", encoding="utf-8")  # noqa: SIM115 (the sink owns and closes it)
    except OSError as e:
        raise UnreadableFile("--access-log", f"cannot open {where!r} for appending ({e.strerror})") from None
    return FileSink(out, clock, json_lines, path=where)
