"""
The C{METHOD:PATH-PATTERN} rules of C{--require-idempotency-key},
C{--rate-limit} and C{--max-concurrent}: parsing and matching.  The
pattern is matched, fnmatch style, against the path after the prefix.

This module imports nothing of the package.
"""

from __future__ import annotations

import fnmatch
from urllib.parse import unquote

from attrs import frozen

#: The periods of C{--rate-limit}, in seconds, and their words.
PERIODS = {"s": (1.0, "second"), "m": (60.0, "minute"), "h": (3600.0, "hour")}


@frozen
class PathRule:
    """
    C{METHOD:PATH-PATTERN}: which requests a rule is about.

    @ivar method: the method, upper case.
    @ivar pattern: an fnmatch pattern of the path after the prefix.
    """

    method: bytes
    pattern: str

    def matches(self, method: bytes, path: bytes) -> bool:
        """
        Whether a request is about this rule: its path as sent, or as a
        backend may route it: percent-escapes decoded, letters in any case
        and one trailing slash ignored (Express routes C{/%76ideos},
        C{/Videos} and C{/videos/} to C{/videos}), so that no spelling of
        a limited path gets past its rule.

        @param path: the path after the prefix, without the query.
        """
        if method != self.method:
            return False
        text = path.decode("latin-1")
        if fnmatch.fnmatchcase(text, self.pattern):
            return True
        loose = unquote(text, encoding="latin-1").lower()
        pattern = self.pattern.lower()
        return fnmatch.fnmatchcase(loose, pattern) or fnmatch.fnmatchcase(loose.rstrip("/") or "/", pattern)


def path_rule(text: str) -> PathRule:
    """
    @raise ValueError: C{text} is not C{METHOD:/PATH-PATTERN}.
    """
    method, colon, pattern = text.partition(":")
    if not colon or not method.isalpha() or not method.isascii() or not pattern.startswith("/"):
        raise ValueError(f"must be METHOD:/PATH-PATTERN (POST:/videos), got {text!r}")
    return PathRule(method.upper().encode("ascii"), pattern)


@frozen
class RateRule:
    """
    C{METHOD:PATH-PATTERN=N/PERIOD}: N such requests per period per caller.

    @ivar text: the rule as written, its name in headers, metrics and errors.
    @ivar period: seconds.
    """

    text: str
    path: PathRule
    limit: int
    period: float
    unit: str


def rate_rule(text: str) -> RateRule:
    """
    @raise ValueError: C{text} is not C{METHOD:/PATH-PATTERN=N/s|m|h}.
    """
    where, _, rate = text.rpartition("=")
    count, slash, period = rate.partition("/")
    if not where or not slash or not count.isdigit() or int(count) < 1 or period not in PERIODS:
        raise ValueError(
            f"must be METHOD:/PATH-PATTERN=N/PERIOD, PERIOD s, m or h (POST:/videos=10/m), got {text!r}"
        )
    seconds, unit = PERIODS[period]
    return RateRule(text, path_rule(where), int(count), seconds, unit)


@frozen
class ConcurrencyRule:
    """
    C{METHOD:PATH-PATTERN=N}: N such requests of one caller in flight at once.
    """

    text: str
    path: PathRule
    limit: int


def slots_rule(text: str) -> ConcurrencyRule:
    """
    @raise ValueError: C{text} is not C{METHOD:/PATH-PATTERN=N}.
    """
    where, _, count = text.rpartition("=")
    if not where or not count.isdigit() or int(count) < 1:
        raise ValueError(f"must be METHOD:/PATH-PATTERN=N (POST:/videos=2), got {text!r}")
    return ConcurrencyRule(text, path_rule(where), int(count))
