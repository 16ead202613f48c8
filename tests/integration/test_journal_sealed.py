"""The adaptation journal on a node whose store is encrypted: sealed step payloads (design §14, §15.1).

Attacker model: the offline storage attacker reads and writes the disk, so they hold the
journal's MAC key (a file beside the device key) but not the KEK. Sealed payloads keep the
adaptation batches confidential, and only records sealed under the store's data key replay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.cli.main import main
from appliance.errors import ManifestError
from appliance.events import read_events
from appliance.format.handoff import Admit
from appliance.format.journal import (
    JOURNAL_VERSION_SEALED,
    KIND_OUTCOME,
    KIND_STEP,
    Record,
    SegmentHeader,
    decode_at,
    encode_record,
)
from appliance.journal.keyfile import load_journal_key
from appliance.node.config import NodeConfig
from appliance.service import loader
from appliance.store.keys import read_keyring
from appliance.store.store import Store
from tests.integration.journal_helpers import batch, state_digest
from tests.integration.node_fixtures import handoff, node
from tests.integration.test_journal_service import _adapt, _up, jnode

pytestmark = pytest.mark.integration
__all__ = ["jnode", "node"]


def _encrypt(config: NodeConfig, tmp_path: Path) -> None:
    kek = f"file:{tmp_path}/store.kek"
    assert main(["key", config.store, "enable", "--kek", kek, "--create-kek", "--json"]) == 0


def _records(path: Path, key: bytes) -> list[Record]:
    data, out, offset = path.read_bytes(), [], 0
    while (r := decode_at(key, data, offset)) is not None:
        assert isinstance(r, Record), r
        out.append(r)
        offset = r.end
    return out


def _segments(config: NodeConfig) -> list[Path]:
    return sorted(Path(config.journal_dir).glob("seg-*.ajl"))


def _needles(steps: range) -> list[bytes]:
    """32-byte windows of every batch's float32 bytes: what a clear payload holds verbatim."""
    out = []
    for i in steps:
        for t in batch(i):
            raw = t.contiguous().numpy().tobytes()
            out += [raw[k : k + 32] for k in range(0, len(raw) - 32, 64)]
    return out


def test_an_encrypted_node_journals_no_batch_in_the_clear_and_replays_every_acknowledged_step(
    jnode: NodeConfig, tmp_path: Path
) -> None:
    _encrypt(jnode, tmp_path)
    handoff(jnode, Admit.SELF)
    live = _up(jnode)
    _adapt(live, range(1, 7))
    assert live.model is not None
    expected = state_digest(live.model)
    active = read_keyring(Store.open(jnode.store).storage)  # its active key names every new segment
    key = load_journal_key(Path(jnode.journal_key_file()))
    headers = [SegmentHeader.from_bytes(_records(p, key)[0].payload) for p in _segments(jnode)]
    assert active is not None and headers and all(h.seal == active.active for h in headers), headers
    blob = b"".join(p.read_bytes() for p in _segments(jnode))
    assert not any(n in blob for n in _needles(range(1, 7))), "a batch is on the medium in the clear"
    again = _up(jnode)  # the process died without an export: replay from the sealed records
    assert again.model is not None and loader.adaptation_step(again.model) == 6
    assert state_digest(again.model) == expected
    replayed = read_events(jnode.event_log, frozenset({"journal.replayed"}))[-1]["fields"]
    assert replayed["records"] == 6


def test_a_clear_segment_planted_in_an_encrypted_nodes_journal_is_not_replayed(
    jnode: NodeConfig, tmp_path: Path
) -> None:
    """Attack: write clear records with the MAC key read off the disk; only sealed ones replay."""
    handoff(jnode, Admit.SELF)
    _adapt(_up(jnode), range(1, 4))  # clear records (the store is not encrypted yet): the attacker's template
    _encrypt(jnode, tmp_path)
    again = _up(jnode)
    assert again.model is not None and loader.adaptation_step(again.model) == 0
    stopped = read_events(jnode.event_log, frozenset({"journal.stopped"}))[-1]["fields"]
    assert stopped["kind"] == "refused" and "clear segment" in stopped["detail"]


def _step_2_replaced_by(jnode: NodeConfig, tmp_path: Path, kind: int, index: int) -> tuple[int, dict[str, Any]]:
    """Run 3 sealed steps, replace step record 2's payload with record (kind, index)'s, re-MACed with the
    stolen journal key; boot again: (the step counter it replayed to, the journal.stopped event)."""
    _encrypt(jnode, tmp_path)
    handoff(jnode, Admit.SELF)
    _adapt(_up(jnode), range(1, 4))
    key = load_journal_key(Path(jnode.journal_key_file()))
    [seg] = _segments(jnode)
    records = _records(seg, key)
    second = next(r for r in records if r.kind == KIND_STEP and r.index == 2)
    donor = next(r for r in records if r.kind == kind and r.index == index)
    assert b"loss" not in donor.payload  # sealed, like every payload of an encrypted node's journal
    forged = encode_record(key, KIND_STEP, second.lineage, 2, donor.payload)
    data = seg.read_bytes()
    seg.write_bytes(data[: second.offset] + forged + data[second.end :])
    again = _up(jnode)
    assert again.model is not None
    stopped = read_events(jnode.event_log, frozenset({"journal.stopped"}))[-1]["fields"]
    return loader.adaptation_step(again.model), stopped


def test_a_sealed_payload_moved_to_another_record_fails_authentication_and_stops_the_replay(
    jnode: NodeConfig, tmp_path: Path
) -> None:
    """Attack: splice record 1's sealed payload into record 2, re-MACed with the stolen journal key."""
    step, stopped = _step_2_replaced_by(jnode, tmp_path, KIND_STEP, 1)
    assert step == 1 and stopped["index"] == 2 and "AES-GCM authentication" in stopped["detail"]  # record 1 only


def test_sealed_segment_headers_are_version_2_and_clear_ones_keep_the_version_1_bytes() -> None:
    from appliance.format.journal import Base

    base = Base("a" * 64, None, 0, 1)
    clear = SegmentHeader(base, "m", 1, "2026-01-01T00:00:00Z")
    sealed = SegmentHeader(base, "m", 1, "2026-01-01T00:00:00Z", "0123456789abcdef" * 2)
    assert b'"version":1' in clear.to_bytes() and b"seal" not in clear.to_bytes()
    assert SegmentHeader.from_bytes(clear.to_bytes()) == clear
    assert f'"version":{JOURNAL_VERSION_SEALED}'.encode() in sealed.to_bytes()
    assert SegmentHeader.from_bytes(sealed.to_bytes()) == sealed
    with pytest.raises(ManifestError, match="data key id"):
        SegmentHeader.from_bytes(sealed.to_bytes().replace(b"0123456789abcdef", b"not-a-key-id-xyz"))


def test_a_sealed_outcome_moved_into_its_step_record_fails_authentication(jnode: NodeConfig, tmp_path: Path) -> None:
    """Attack: a written-ahead step's sealed outcome (its own associated data) re-MACed as the step itself."""
    step, stopped = _step_2_replaced_by(jnode, tmp_path, KIND_OUTCOME, 2)
    assert step == 1 and stopped["index"] == 2 and "AES-GCM authentication" in stopped["detail"]


def test_written_ahead_headers_are_version_3_with_or_without_a_seal() -> None:
    from appliance.format.journal import JOURNAL_VERSION_AHEAD, Base

    base = Base("a" * 64, None, 0, 1)
    for seal in (None, "0123456789abcdef" * 2):
        header = SegmentHeader(base, "m", 1, "2026-01-01T00:00:00Z", seal, ahead=True)
        raw = header.to_bytes()
        assert f'"version":{JOURNAL_VERSION_AHEAD}'.encode() in raw and (b"seal" in raw) == (seal is not None)
        assert SegmentHeader.from_bytes(raw) == header
