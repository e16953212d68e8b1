"""
The proxy's fast way of filling L{Headers} (L{put_parsed}, L{headers_of})
gives the same headers as Twisted's own C{setRawHeaders}, for every name
and every value without CR or LF (which both parsers refuse upstream of it).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers, InvalidHeaderName

from sora2proxy.http._headers import headers_of, put_parsed

TOKEN = st.text("!#$%&'*+-.^_`|~0123456789abcXYZ", min_size=1, max_size=12).map(str.encode)
VALUE = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
FIELDS = st.lists(st.tuples(TOKEN, st.lists(VALUE, min_size=1, max_size=3)), max_size=8)


class FillTests(SynchronousTestCase):
    """
    Twisted's C{setRawHeaders} is the oracle.
    """

    @given(FIELDS)
    def test_same_as_set_raw_headers(self, fields: list[tuple[bytes, list[bytes]]]) -> None:
        """
        Any names and clean values give the same headers, in the same order.
        """
        ours, twisted = Headers(), Headers()
        for name, values in fields:
            put_parsed(ours, name, list(values))
            twisted.setRawHeaders(name, values)
        self.assertEqual(list(ours.getAllRawHeaders()), list(twisted.getAllRawHeaders()))
        built = headers_of({name.lower(): (name, list(values)) for name, values in fields})
        expected = Headers()
        for name, values in {name.lower(): (name, values) for name, values in fields}.values():
            expected.setRawHeaders(name, values)
        self.assertEqual(list(built.getAllRawHeaders()), list(expected.getAllRawHeaders()))

    def test_bad_name_refused(self) -> None:
        """
        A name that is not a token is refused, as Twisted refuses it.
        """
        self.assertRaises(InvalidHeaderName, put_parsed, Headers(), b"bad name", [b"v"])

    def test_values_copied(self) -> None:
        """
        Headers built from parsed fields do not share their value lists.
        """
        values = [b"a"]
        headers = headers_of({b"x": (b"X", values)})
        values.append(b"b")
        self.assertEqual(headers.getRawHeaders(b"x"), [b"a"])
