"""Regression: a delta that loses to a full frame must not stop a reused frame from being copied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = pytest.mark.unit


def scalar(name: str, value: int) -> TensorSource:
    data = np.array([value], dtype="<i8").view(np.uint8)
    return TensorSource(name, "int64", (), lambda: data)


def test_reused_frame_is_copied_even_when_a_discarded_delta_obtained_it_first(tmp_path: Path) -> None:
    """W3: every frame a committed manifest names is in its slot, whatever order the encoder workers ran in.

    Each pair has an int64 scalar that changes 0 -> 1 (its delta against the parent's 0 is
    tried and loses to an 8-byte full frame) and one that stays 0 (reuses the parent's 0 frame,
    which the discarded delta had fetched from the other slot first).
    """
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    pairs = 40
    store.commit([scalar(f"t{i:02d}.{k}", 0) for i in range(pairs) for k in ("a", "b")], [key])
    result, _ = store.commit([scalar(f"t{i:02d}.{k}", int(k == "a")) for i in range(pairs) for k in ("a", "b")], [key])
    assert result.slot == "B"
    report = store.verify()
    assert report.all_ok, [c for c in report.to_dict()["checkpoints"] if not c["ok"]]
    assert result.counts["copied"] == 1  # the shared zero frame, copied once however many tensors reuse it
