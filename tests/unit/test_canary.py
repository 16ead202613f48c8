"""Canary parsing and checking (pure)."""

from __future__ import annotations

import math

import pytest

from appliance.errors import ManifestError
from appliance.format.canary import Canary, check, output_digest

pytestmark = pytest.mark.unit


def test_tolerance_canary_accepts_small_differences_and_rejects_large_ones() -> None:
    c = Canary(input=[[1.0, 2.0]], expected=[[0.5, -1.0]], atol=1e-3, rtol=0.0)
    assert check(c, [[0.5004, -1.0]]).ok
    result = check(c, [[0.5, -0.9]])
    assert not result.ok and "output[1]" in result.detail


def test_shape_and_non_finite_outputs_fail() -> None:
    c = Canary(input=[[1.0]], expected=[[0.5, 0.5]])
    assert not check(c, [[0.5], [0.5]]).ok
    assert not check(c, [[0.5, math.nan]]).ok
    assert not check(c, "0.5").ok
    assert not check(c, [["a", 0.5]]).ok


def test_exact_canary_pins_the_output_digest() -> None:
    out = [[0.25, 1.5]]
    c = Canary(input=[[0.0]], output_sha256=output_digest(out))
    assert check(c, out).ok and not check(c, [[0.25, 1.5000001]]).ok


def test_round_trip_and_metadata() -> None:
    c = Canary(input=[[1, 2]], expected=[[3]], atol=0.1, rtol=0.2)
    assert Canary.from_dict(c.to_dict()) == c
    assert Canary.from_metadata({"canary": c.to_dict()}) == c
    assert Canary.from_metadata({"step": 1}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"input": [[1.0]]},  # neither expected nor digest
        {"input": [[1.0]], "expected": [[1.0]], "output_sha256": "0" * 64},
        {"input": [], "expected": [[1.0]]},
        {"input": [[True]], "expected": [[1.0]]},
        {"input": [[1.0]], "expected": [[1.0]], "atol": -1},
        {"input": [[1.0]], "output_sha256": "nothex"},
        {"input": [[1.0]], "expected": [[1.0]], "surprise": 1},
    ],
)
def test_malformed_canaries_are_refused(bad: dict) -> None:
    with pytest.raises(ManifestError):
        Canary.from_dict(bad)
