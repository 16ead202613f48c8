"""`appliance report`: answers "what is my verifiable maximum restore time?" on the device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.cli.main import main
from appliance.events import EventLog
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.store import Store

pytestmark = pytest.mark.integration


def _commit(store: Store, key: SigningKey, seed: int) -> None:
    data = np.random.default_rng(seed).normal(0, 0.02, 300_000).astype(np.float32)
    store.commit([TensorSource("w", "float32", data.shape, lambda: data.view(np.uint8))], [key])


def test_report_states_expected_and_worst_case_with_fallback_and_observed_boots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=1 << 18))
    _commit(store, key, 1)
    _commit(store, key, 2)
    events = tmp_path / "events.jsonl"
    EventLog(events, "service", journal=None).emit("restore.finished", slot="B", generation=2, raw_bytes=1_200_000,
                                                   seconds=0.25, stats={})  # fmt: skip
    assert main(["report", str(tmp_path / "s"), "--json", "--events", str(events), "--save-profile"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"]["generation"] == 2 and report["fallback"]["generation"] == 1
    private = report["estimate"]["private"]
    assert 0 < private["expected_seconds"] <= private["worst_seconds"] < report["worst_case_seconds"]
    assert report["observed"][0]["seconds"] == 0.25
    assert report["device"]["cores"] >= 1 and "bg4+zstd-lit" in report["device"]["decode"]
    assert store.device_profile() is not None  # --save-profile: the auto policy now has rates
    assert Store.resolve_policy("auto", store.device_profile()) in ("fast", "compact")


def test_report_text_says_when_no_boot_was_observed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", policy="fast"))
    _commit(store, key, 3)
    assert main(["report", str(tmp_path / "s"), "--events", str(tmp_path / "none.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "verifiable maximum restore time" in text and "no boot observed yet" in text
    assert "zero-copy" in text
