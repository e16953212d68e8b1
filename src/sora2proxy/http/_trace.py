"""
W3C trace context (U{https://www.w3.org/TR/trace-context/}): each request
forwarded is a span of the client's trace.  A valid C{traceparent} goes
upstream with the same trace id, a new parent id (the proxy's span) and the
sampled flag as received, and its C{tracestate} unchanged; a missing or
invalid one starts a new trace (version 00, random ids, sampled: the proxy
is the edge, where the decision is taken, and Envoy samples every request by
default), and any C{tracestate} is dropped, as the specification says.

Cheap on purpose (it runs for every request): one precompiled regular
expression, ids from C{random.getrandbits} (as OpenTelemetry's Python SDK
makes them: trace ids need to be unique, not secret).
"""

from __future__ import annotations

import re
from random import getrandbits

from attrs import frozen
from twisted.web.http_headers import Headers, _nameEncoder

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
#: The name as C{Headers} keeps it (Header-Case), read without C{getRawHeaders}.
_STORED_TRACEPARENT = _nameEncoder.encode(TRACEPARENT)
#: version-traceid-parentid-flags, lowercase hex; a later version may add fields after a dash.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\x00-\x1f]*)?")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


@frozen
class Trace:
    """
    The trace context of one request.

    @ivar trace_id: 32 lowercase hex digits, the client's or a new one.
    @ivar span_id: the proxy's span: the parent id sent upstream.
    @ivar sampled: C{"01"} or C{"00"}, the trace flags sent upstream.
    @ivar continued: the client sent a valid C{traceparent} (its
        C{tracestate} is passed on only then).
    """

    trace_id: str
    span_id: str
    sampled: str
    continued: bool

    @property
    def traceparent(self) -> bytes:
        """
        The C{traceparent} value sent upstream (version 00).
        """
        return f"00-{self.trace_id}-{self.span_id}-{self.sampled}".encode("ascii")


def trace_of(headers: Headers) -> Trace:
    """
    The trace of a request with C{headers}: the client's, continued, when it
    sent exactly one valid C{traceparent}; else a new one.
    """
    values = headers._rawHeaders.get(_STORED_TRACEPARENT)
    if values is not None and len(values) == 1:
        found = _TRACEPARENT.fullmatch(values[0].strip(b" \t"))
        if found is not None:
            version, trace_id, parent_id, flags, more = found.groups()
            if (
                version != b"ff"
                and (version != b"00" or more is None)
                and trace_id != _ZERO_TRACE
                and parent_id != _ZERO_PARENT
            ):
                sampled = "01" if int(flags, 16) & 1 else "00"
                return Trace(
                    trace_id.decode("ascii"), getrandbits(64).to_bytes(8, "big").hex(), sampled, True
                )
    ids = getrandbits(192).to_bytes(24, "big").hex()  # both ids at once (hex() is quicker than a format)
    return Trace(ids[:32], ids[32:], "01", False)
