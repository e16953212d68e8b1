"""
CPU per access line, sink by sink: ``python bench/access_sinks.py``.

A microbenchmark (``timeit``), not a load test: each sink records the same
line and fields as a proxied request's, and the figure is the median over
a few repeats of the time one ``record`` takes, the sink's writes included
(to ``/dev/null``).  ``log`` goes through ``twisted.logger`` to the observer
twistd installs (``textFileLogObserver``, or ``JSONLinesObserver`` with
``--log-format json``); the file sinks buffer and write 512 lines at a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import timeit
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogBeginner, textFileLogObserver

from sora2proxy.ops._access_log import FileSink, LoggerSink, NoSink
from sora2proxy.ops._logs import JSONLinesObserver

LINE = "GET /api/proxy/videos/video_1?x=1 200 tries=1 2ms  id=0123456789abcdef0123456789abcdef"
FIELDS: dict[str, Any] = {
    "method": "GET",
    "path": "/api/proxy/videos/video_1?x=1",
    "status": 200,
    "tries": 1,
    "duration_ms": 2,
    "error_type": "",
    "request_id": "0123456789abcdef0123456789abcdef",
    "upstream": "http://127.0.0.1:3101/api",
}
NUMBER = 20_000


def per_line(record: Any) -> float:
    """
    Median microseconds of CPU time (this process's) of one C{record(LINE, FIELDS)}.
    """
    runs = timeit.repeat(lambda: record(LINE, FIELDS), timer=time.process_time, number=NUMBER, repeat=5)
    return statistics.median(runs) / NUMBER * 1e6


def through_logger(log_format: str) -> float:
    """
    C{--access-log log}: the global publisher, to the one observer twistd
    would install (in a process of its own: logging begins once).
    """
    devnull = open(os.devnull, "w")  # noqa: SIM115
    observer = JSONLinesObserver(devnull) if log_format == "json" else textFileLogObserver(devnull)
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)
    return per_line(LoggerSink().record)


def main() -> None:
    if len(sys.argv) > 1:
        print(through_logger(sys.argv[1]))
        return
    devnull = open(os.devnull, "w")  # noqa: SIM115
    clock = Clock()
    clock.advance(1_700_000_000)
    figures = {
        "off": per_line(NoSink().record),
        "- or FILE, text": per_line(FileSink(devnull, clock).record),
        "- or FILE, json": per_line(FileSink(devnull, clock, json_lines=True).record),
    }
    for log_format in ("text", "json"):
        child = subprocess.run(
            [sys.executable, __file__, log_format], capture_output=True, text=True, check=True
        )
        figures[f"log, {log_format} observer"] = float(child.stdout)
    print(f"{'--access-log':<24}{'µs of CPU per line':>20}")
    for name, micros in figures.items():
        print(f"{name:<24}{micros:>20.2f}")


if __name__ == "__main__":
    main()
