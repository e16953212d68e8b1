"""
C{--log-format json}: one flat JSON object a line, for log shippers: the
time, level, namespace and formatted message, plus the event's own fields
(an access event's C{request_id}, C{method}, C{path}, C{status}...).
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

_SCALARS = (str, int, float, bool, type(None))


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each log event to C{out} as a JSON line.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

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
