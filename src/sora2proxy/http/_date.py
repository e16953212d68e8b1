"""
The C{Date} header (RFC 9110 section 6.6.1), formatted once a second: a
busy proxy answers thousands of requests in the same second, and each
formatting (C{gmtime} and a C{%} format) costs as much as the lookup of the
cached value many times over.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import datetimeToString


@define
class HTTPDate:
    """
    The current time as an HTTP date (C{Sun, 06 Nov 1994 08:49:37 GMT}),
    read from C{clock} and formatted again only when its whole second
    changes.
    """

    _clock: IReactorTime
    _second: int = field(default=-1, init=False)
    _value: bytes = field(default=b"", init=False)

    def now(self) -> bytes:
        """
        @return: the C{Date} header's value for a response sent now.
        """
        second = int(self._clock.seconds())
        if second != self._second:
            self._second = second
            self._value = datetimeToString(second)
        return self._value
