"""
The C{METHOD:PATH-PATTERN} rules (C{--rate-limit}, C{--max-concurrent},
C{--require-idempotency-key}) match every spelling of a path that a backend
may route to it: percent-escapes, letter case, a trailing slash.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy._rules import path_rule

#: How a client may spell each byte of a path: as it is, percent-encoded
#: (either case of hex), or in the other letter case.
SPELLINGS = st.lists(
    st.sampled_from(["plain", "escaped", "escaped-lower", "swapped"]), min_size=20, max_size=20
)


def spelled(path: str, ways: list[str]) -> bytes:
    out = []
    for index, char in enumerate(path):
        way = ways[index % len(ways)]
        if char == "/" or way == "plain":
            out.append(char)
        elif way == "escaped":
            out.append(f"%{ord(char):02X}")
        elif way == "escaped-lower":
            out.append(f"%{ord(char):02x}")
        else:
            out.append(char.swapcase())
    return "".join(out).encode("ascii")


class MatchTests(SynchronousTestCase):
    """
    Rules as written in the README.
    """

    @given(SPELLINGS, st.booleans())
    def test_every_spelling_matches(self, ways: list[str], slash: bool) -> None:
        """However the path is spelled, a rule that names it applies."""
        create, events = path_rule("POST:/videos"), path_rule("GET:/videos/*/events")
        self.assertTrue(create.matches(b"POST", spelled("/videos", ways) + (b"/" if slash else b"")))
        self.assertTrue(events.matches(b"GET", spelled("/videos/video_1/events", ways)))

    def test_other_paths_and_methods(self) -> None:
        """Other paths and other methods are not the rule's."""
        create = path_rule("POST:/videos")
        for path in (b"/videosx", b"/video", b"/videos/1", b"/%76ideo", b"/"):
            self.assertFalse(create.matches(b"POST", path), path)
        self.assertFalse(create.matches(b"GET", b"/videos"))
