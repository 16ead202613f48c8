"""The canary's recordability check says *which part* failed and *why* in typed fields.

``service/export._canary`` blames a damaged state (``ExportFileError``) instead of the canary when
the answer is not finite; it must decide on these fields, never on the message text.
"""

from __future__ import annotations

import math

import pytest

from appliance.errors import CanaryNotRecordableError, ManifestError
from appliance.format.canary import Canary, check_recordable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("inp", "answer", "part", "nonfinite"),
    [
        ([[math.nan, 1.0]], [[1.0]], "input", True),
        ([[1.0]], [[math.inf]], "answer", True),
        ([[[[[[[[[1.0]]]]]]]]], [[1.0]], "input", False),  # rank 9
        ([[1.0]], [[[[[[[[[1.0]]]]]]]]], "answer", False),
    ],
)
def test_a_canary_boot_could_not_check_is_refused_naming_the_part_and_the_reason(
    inp: list[object], answer: list[object], part: str, nonfinite: bool
) -> None:
    canary = Canary(input=inp, expected=answer, atol=1e-5, rtol=1e-4)  # type: ignore[arg-type]
    with pytest.raises(CanaryNotRecordableError) as info:
        check_recordable(canary, 8)
    assert (info.value.part, info.value.nonfinite) == (part, nonfinite)
    assert isinstance(info.value, ManifestError) and info.value.exit_code == 59  # a ManifestError with its own code


def test_a_checkable_canary_passes() -> None:
    check_recordable(Canary(input=[[0.5, 1.0]], expected=[[2.0]], atol=1e-5, rtol=1e-4), 8)
