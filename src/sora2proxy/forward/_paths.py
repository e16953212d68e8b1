"""
The target policy of the front door: what a client's request target may be
before the proxy builds the upstream URL from it.  The forwarded URL is always
the configured upstream's origin and base path plus the client's path, so no
request can reach another host; these rules also keep it under the base path,
whatever the upstream decodes.

- absolute-form (C{GET http://other/x HTTP/1.1}) is accepted and reduced to
  its path and query: the named host is ignored, never contacted;
- C{CONNECT}, authority-form and asterisk-form (C{OPTIONS *}) are refused;
- bytes outside printable ASCII (controls, NUL, DEL, non-ASCII) are refused:
  clients percent-encode them; so is a fragment (C{#}: it never leaves the
  client, RFC 9112 section 3.2) and a percent-encoded NUL (C{%00}) in the
  path, which a backend in C may read as the path's end;
- a path segment that is C{.} or C{..} once percent-decoded (any number of
  times: C{%2e}, C{%252e}...), also with path parameters (C{..;x}, C{.;},
  C{..%3b}: Tomcat and Spring drop the parameters and read C{..}), or that
  holds a backslash (C{\\}, C{%5c}), or an empty segment (C{//}) is refused;
- C{%2F} is kept as sent (the proxy does not treat it as a separator and
  does not decode it), but a segment whose decoding holds C{./} or C{../}
  pieces is refused, so a backend that decodes C{%2F} cannot be walked
  out of its base path either.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from attrs import frozen

#: Bytes allowed anywhere in a request target: printable ASCII (deleted by
#: C{bytes.translate}, which leaves any other byte).
_PRINTABLE = bytes(range(0x21, 0x7F))
#: What makes a path worth a closer look: an escape, a backslash, a dot
#: segment's start or an empty segment.
_SUSPECT = re.compile(rb"[%\\]|/[./]")


@frozen
class TargetRefused:
    """
    Why a request target is refused (400 C{BAD_REQUEST}).
    """

    reason: str


def _decoded(segment: bytes) -> bytes:
    for _ in range(4):  # %252e -> %2e -> .
        decoded = unquote_to_bytes(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def check_target(method: bytes, target: bytes) -> bytes | TargetRefused:
    """
    @return: the origin-form target (path and query) to route, or why it is refused.
    """
    if method == b"CONNECT":
        return TargetRefused("CONNECT is not supported: this is a reverse proxy, not a tunnel.")
    if not target or target.translate(None, _PRINTABLE):
        return TargetRefused(
            "The request target holds control, space or non-ASCII bytes; percent-encode them."
        )
    if b"#" in target:
        return TargetRefused("The request target holds a fragment ('#'); fragments stay in the client.")
    if not target.startswith(b"/") and target[:8].lower().startswith((b"http://", b"https://")):
        start = target.find(b"/", target.find(b"//") + 2)
        query = target.find(b"?", target.find(b"//") + 2)
        if start < 0 or (0 <= query < start):
            target = b"/" + (target[query:] if query >= 0 else b"")
        else:
            target = target[start:]
    if not target.startswith(b"/"):
        return TargetRefused("The request target must be a path starting with '/'.")
    path = target.partition(b"?")[0].partition(b"#")[0]
    if _SUSPECT.search(path) is None:
        return target  # the common case: nothing to decode, no dot segment, no empty segment
    segments = path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        if segment == b"" and index < len(segments) - 1:
            return TargetRefused("Empty path segments ('//') are not allowed.")
        decoded = _decoded(segment)
        if b"\x00" in decoded:
            return TargetRefused("A percent-encoded NUL (%00) is not allowed in the path.")
        if b"\\" in decoded:
            return TargetRefused("Backslashes are not allowed in the path.")
        pieces = decoded.split(b"/")
        if any(piece.split(b";", 1)[0] in (b".", b"..") for piece in pieces):
            return TargetRefused(
                "Dot segments ('.', '..', also percent-encoded or with ';' parameters) "
                "are not allowed in the path."
            )
    return target
