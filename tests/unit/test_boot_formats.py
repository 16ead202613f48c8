"""Run-time file formats: handoff, service report, state-export header and outbox names (pure)."""

from __future__ import annotations

import pytest

from appliance.errors import ManifestError
from appliance.format.canary import Canary
from appliance.format.export import ExportInfo, content_digest, export_name, export_sequence
from appliance.format.handoff import Admit, Handoff, Phase, ServiceReport

pytestmark = pytest.mark.unit
D = "a" * 64


def test_handoff_round_trip_and_validation() -> None:
    h = Handoff("abc123", "B", 7, D, Admit.SELF, "2026-01-01T00:00:00Z")
    assert Handoff.from_dict(h.to_dict()) == h
    for bad in ({"slot": "C"}, {"admit": "anyone"}, {"boot_id": "../x"}, {"manifest_digest": "x"}, {"generation": 0}):
        with pytest.raises(ManifestError):
            Handoff.from_dict(h.to_dict() | bad)


def test_service_report_round_trip() -> None:
    h = Handoff("abc123", "A", 1, D)
    r = ServiceReport(42, Phase.FAILED, h, "t", {"error": "FrameError", "phase": "restoring"}, None, {"loading": 1.5})
    assert ServiceReport.from_dict(r.to_dict()) == r
    with pytest.raises(ManifestError):
        ServiceReport.from_dict(r.to_dict() | {"phase": "dancing"})
    assert "replay" not in r.to_dict()  # without a journal the report keeps its exact v1 form


def test_service_report_carries_the_journal_replay_to_boot() -> None:
    replay = {"replayed": 2, "stopped": {"kind": "gap", "segment": "s", "index": 3, "detail": "d"}}
    r = ServiceReport(42, Phase.RESTORED, Handoff("abc123", "A", 1, D), "t", replay=replay)
    assert ServiceReport.from_dict(r.to_dict()) == r and r.to_dict()["replay"] == replay
    with pytest.raises(ManifestError):
        ServiceReport.from_dict(r.to_dict() | {"replay": "stopped"})


def test_export_names_sort_in_sequence_order() -> None:
    names = [export_name(n) for n in (10, 9, 100)]
    assert sorted(names) == [export_name(9), export_name(10), export_name(100)]
    assert export_sequence(export_name(9)) == 9
    assert export_sequence("export-1.safetensors") is None and export_sequence(".export-x.tmp-1") is None


def test_export_header_round_trip_and_checkpoint_metadata() -> None:
    info = ExportInfo("m:f", 3, "t", D, 2, 16, 0.25, Canary([[1.0]], [[2.0]]), {"slot": "A", "generation": 1})
    assert ExportInfo.from_header(info.header_value()) == info
    meta = info.checkpoint_metadata()
    assert meta["step"] == 3 and meta["canary"]["expected"] == [[2.0]] and meta["derived_from"]["slot"] == "A"
    with pytest.raises(ManifestError):
        ExportInfo.from_header(None)
    with pytest.raises(ManifestError):
        ExportInfo.from_header('{"format": "appliance.export"}')


def test_content_digest_binds_names_shapes_and_bytes() -> None:
    base = [("a", "float32", (2,), b"\x00" * 8), ("b", "int64", (), b"\x01" + b"\x00" * 7)]
    ref = content_digest(base)
    assert content_digest(list(reversed(base))) == ref  # order-independent input
    assert content_digest([("a", "float32", (1, 2), b"\x00" * 8), base[1]]) != ref
    assert content_digest([("a", "float32", (2,), b"\x00" * 7 + b"\x01"), base[1]]) != ref
    assert content_digest([("c", "float32", (2,), b"\x00" * 8), base[1]]) != ref
