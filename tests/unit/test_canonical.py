"""Canonical JSON and the strict parser: the bytes that get hashed and signed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes, strict_loads

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_round_trip_is_stable(value: object) -> None:
    data = canonical_bytes(value)
    assert canonical_bytes(strict_loads(data, what="x", max_bytes=1 << 20, max_depth=64)) == data


def test_canonical_sorts_keys_and_has_no_whitespace() -> None:
    assert canonical_bytes({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "non-finite"),
        (b'{"a": Infinity}', "non-finite"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100 + b"]" * 100, "nested"),
        (b"[" * 100000 + b"]" * 100000, "nested"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_strict_loads_refuses_malformed_input(data: bytes, needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        strict_loads(data, what="input", max_bytes=1 << 22, max_depth=64)


def test_strict_loads_refuses_oversized_input_before_parsing() -> None:
    with pytest.raises(ManifestError, match="above the cap"):
        strict_loads(b" " * 1001, what="input", max_bytes=1000, max_depth=8)


def test_canonical_refuses_nan() -> None:
    with pytest.raises(ManifestError):
        canonical_bytes({"x": float("nan")})
