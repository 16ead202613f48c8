"""The event catalogue and log: stable ids, JSON lines, journald datagrams, the shipped catalog."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

import pytest

from appliance.events import CATALOGUE, EventLog, event_fields, journal_datagram, read_events

pytestmark = pytest.mark.unit


def test_catalogue_ids_are_unique_128_bit_hex_and_templates_render() -> None:
    ids = [e.id for e in CATALOGUE.values()]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert all(2 <= e.priority <= 7 for e in CATALOGUE.values())


def test_released_ids_never_change() -> None:
    """Consumers match on ids: these are public once released."""
    assert CATALOGUE["slot.marked_good"].id == "08055e11634748a6988d00380e3ab524"
    assert CATALOGUE["recovery.entered"].id == "0f34c751f39b427c8f9396e44e3a3bdd"
    assert CATALOGUE["persist.committed"].id == "acfa30a9099e41fcbce1de13a28f4e97"


def test_events_are_json_lines_with_fields_and_a_rendered_message(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log" / "events.jsonl", "boot", journal=None)
    log.emit("slot.marked_good", slot="B", generation=7)
    log.emit("fallback.taken", slot="A", generation=3, reason="canary")
    events = read_events(tmp_path / "log" / "events.jsonl")
    assert [e["event"] for e in events] == ["slot.marked_good", "fallback.taken"]
    assert events[0]["message"] == "slot B generation 7 marked GOOD"
    assert events[0]["id"] == CATALOGUE["slot.marked_good"].id and events[0]["component"] == "boot"
    assert (
        read_events(tmp_path / "log" / "events.jsonl", frozenset({"fallback.taken"}))[0]["fields"]["reason"] == "canary"
    )


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path, "x", journal=None).emit("boot.started", boot_id="b", floor=0)
    with open(path, "a") as f:
        f.write('{"event": "slot.marked_go')
    assert [e["event"] for e in read_events(path)] == ["boot.started"]


def test_an_unwritable_log_never_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    record = EventLog(tmp_path / "file" / "events.jsonl", "x", journal=None).emit("boot.started", boot_id="b", floor=0)
    assert record["event"] == "boot.started"


def test_journald_native_protocol_fields(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        EventLog(None, "persist", journal=str(path)).emit("persist.failed", file="f", error="E", problem="two\nlines")
        data = server.recv(65536)
    assert b"MESSAGE_ID=706b73ad3da44a8b93a8c5c21c3f6788\n" in data
    assert b"SYSLOG_IDENTIFIER=appliance-persist\n" in data and b"APPLIANCE_FILE=f\n" in data
    assert b"APPLIANCE_PROBLEM\n" + struct.pack("<Q", 9) + b"two\nlines\n" in data


def test_datagram_encodes_non_strings_as_json() -> None:
    assert journal_datagram({"A": {"x": 1}}) == b'A={"x": 1}\n'


def test_boot_doc_lists_every_event_with_its_id() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "boot.md").read_text()
    for e in CATALOGUE.values():
        assert f"| `{e.name}` | {e.id} |" in doc, e.name


def test_event_data_is_under_fields_and_a_record_without_them_has_none(tmp_path: Path) -> None:
    """Readers take event data from ``fields`` (trial 4, N5: the report looked at the top level)."""
    log = EventLog(tmp_path / "events.jsonl", "service", journal=None)
    record = log.emit("restore.finished", slot="A", generation=2, raw_bytes=5, seconds=0.5, stats={})
    assert "seconds" not in record and event_fields(record)["seconds"] == 0.5
    assert event_fields(read_events(tmp_path / "events.jsonl")[0]) == record["fields"]
    assert event_fields({"event": "restore.finished", "seconds": 1.0}) == {}
    assert event_fields({"event": "restore.finished", "fields": ["planted"]}) == {}
