"""
The target policy's quick checks (C{forward._paths}) agree with the plain
spellings they replace: a regular expression for printable ASCII, and four
substring tests for a path worth decoding.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.forward._paths import _SUSPECT, TargetRefused, check_target

#: The oracle: printable ASCII, one byte or more.
_PRINTABLE = re.compile(rb"[\x21-\x7e]+")
_BYTES_REASON = "The request target holds control, space or non-ASCII bytes; percent-encode them."

#: Bytes that matter to the policy, and a few that do not.
_PIECES = st.sampled_from(
    [b"/", b".", b"%", b"2", b"e", b"\\", b"?", b"#", b";", b"a", b"http://", b" ", b"\x00", b"\x7f", b"\x80"]
)
_TARGETS = st.one_of(st.lists(_PIECES, max_size=12).map(b"".join), st.binary(max_size=24))


class QuickCheckTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(_TARGETS)
    def test_unprintable_refused_as_the_regex_says(self, target: bytes) -> None:
        """A target is refused for its bytes exactly when it is not one or more printable ASCII bytes."""
        checked = check_target(b"GET", target)
        refused = isinstance(checked, TargetRefused) and checked.reason == _BYTES_REASON
        self.assertEqual(refused, _PRINTABLE.fullmatch(target) is None)

    @settings(max_examples=500, deadline=None)
    @given(_TARGETS)
    def test_suspect_as_substrings_say(self, path: bytes) -> None:
        """A path is looked at closely exactly when it holds %, a backslash, '/.' or '//'."""
        plain = b"%" not in path and b"\\" not in path and b"/." not in path and b"//" not in path
        self.assertEqual(_SUSPECT.search(path) is None, plain)
