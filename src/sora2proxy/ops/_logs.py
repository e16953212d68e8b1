"""
C{--log-format json}: one flat JSON object a line, for log shippers: the
time, level, namespace and formatted message, plus the event's own fields
(an access event's C{request_id}, C{method}, C{path}, C{status}...).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

_SCALARS = (str, int, float, bool, type(None))


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each log event to C{out} as a JSON line.

    @param path: the file C{out} was opened from, for appending (twistd's
        C{--logfile}): L{reopen} opens it again.
    """

    def __init__(self, out: IO[str], path: str | None = None) -> None:
        self._out = out
        self._path = path

    @classmethod
    def to(cls, path: str | None) -> JSONLinesObserver:
        """
        An observer writing to the file C{path} (appending), or to standard
        output for L{None}.
        """
        if path is None:
            return cls(sys.stdout)
        return cls(open(path, "a", encoding="utf-8"), path)

    def reopen(self) -> None:
        """
        Open the file's path again (C{logrotate} renamed it); keep the old
        file if that fails.
        """
        if self._path is None:
            return
        try:
            fresh = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError:
            return
        old, self._out = self._out, fresh
        old.close()

    def __call__(self, event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and isinstance(value, _SCALARS):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()
