"""The dashboard's path parameters, fuzzed: any text is either a valid address / id or a 400 with a one-line
message; nothing else is ever raised (no 5xx from a URL)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlora.node.dashboard import MAX_ID, parse_address, parse_id
from openlora.node.errors import RequestRejected

hexdigit = st.sampled_from("0123456789abcdefABCDEF")
addressish = st.one_of(st.text(max_size=200), st.builds(lambda d: "0x" + "".join(d), st.lists(hexdigit, min_size=38,
                                                                                              max_size=42)))


@settings(max_examples=150, deadline=None)
@given(addressish)
def test_any_text_is_an_address_or_a_400(value):
    try:
        out = parse_address(value)
    except RequestRejected as e:
        assert e.status == 400 and e.code == "invalid_address" and "\n" not in str(e) and len(str(e)) < 300
        return
    assert out.lower() == value.lower() and len(out) == 42


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=60), st.integers(min_value=-2**70, max_value=2**70).map(str)))
def test_any_text_is_an_id_or_a_400(value):
    try:
        out = parse_id(value)
    except RequestRejected as e:
        assert e.status == 400 and e.code == "invalid_id" and "\n" not in str(e) and len(str(e)) < 300
        return
    assert 1 <= out <= MAX_ID and str(out) == value.lstrip("0")


def test_checksums():
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"         # EIP-55's own example
    assert parse_address(good) == good == parse_address(good.lower()) == parse_address("0x" + good[2:].upper())
    with pytest.raises(RequestRejected, match="checksum"):
        parse_address(good[:-1] + "D")
