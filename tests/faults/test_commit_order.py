"""Issue 12, kind 8: the commit record is never durable before the bundle it names (W1/W2).

The boot oracle alone cannot see this bug (a record without its bundle is refused and the
previous checkpoint boots, which the oracle accepts), so this test states the rule directly:
in every crash state of every commit path — each cut, unsynced drops, ALICE orderings — a
commit record that is present and parses has its bundle present with the recorded size and
SHA-256. A negative control plants the bug (record written first) and the check must fail.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest

import appliance.store.commit as commit_module
from appliance.errors import ApplianceError
from appliance.format.commit import CommitRecord
from appliance.format.digest import Digest
from appliance.storage.recording import Image, Op
from appliance.store import layout
from appliance.store.encode import TensorSource
from appliance.store.store import Store

from . import counts
from .crashstates import CrashState, build, cuts, orderings, unsynced
from .model import Keys, empty_store_storage, make_config
from .workloads import Recorded

pytestmark = pytest.mark.faults
COMMIT_PATHS = ("first", "second", "delta", "compact", "two-commits", "gc-keep2")


def _states(ops: list[Op]) -> Iterator[CrashState]:
    yield from cuts(ops)
    yield from orderings(ops)
    yield from unsynced(ops, 3, random.Random(12))


def records_without_bundle(base: Image, ops: list[Op], states: Iterable[CrashState]) -> list[str]:
    """Crash states in which a parseable commit record names a bundle that is absent or different."""
    found = []
    for state in states:
        files = build(base, ops, state).reachable()
        for path, data in files.items():
            name = path.rsplit("/", 1)[-1]
            parsed = layout.parse_checkpoint_name(name)
            if data is None or parsed is None or parsed[1] != "commit":
                continue
            try:
                record = CommitRecord.from_bytes(data)
            except ApplianceError:
                continue  # a torn record is not a commit point
            bundle = files.get(layout.bundle_path(record.slot, record.generation))
            if bundle is None or len(bundle) != record.bundle_size or Digest.of(bundle) != record.bundle_digest:
                found.append(f"{state.describe(ops)}: {path} names a bundle that is not durable")
    return found


@pytest.mark.parametrize("name", COMMIT_PATHS)
def test_kind8_commit_record_is_never_durable_before_its_bundle(recorded: dict[str, Recorded], name: str) -> None:
    rec = recorded[name]
    states = list(_states(rec.ops))
    counts.add("commit-order crash states", len(states))
    assert records_without_bundle(rec.base, rec.ops, states) == []


def test_kind8_negative_control_a_record_written_before_its_bundle_is_caught(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug of the field report: the record written first. The check above must see it."""
    real = commit_module.write_durable
    held: list[tuple[Any, str, bytes]] = []

    def record_first(storage: Any, path: str, data: bytes) -> None:
        if path.endswith(layout.MANIFEST_SUFFIX):
            held.append((storage, path, data))  # the bundle waits ...
            return
        real(storage, path, data)
        if path.endswith(layout.COMMIT_SUFFIX):
            for args in held:  # ... until after the record
                real(*args)
            held.clear()

    monkeypatch.setattr(commit_module, "write_durable", record_first)
    storage = empty_store_storage()
    store = Store(storage, make_config(), keys.trust)
    base = storage.image()
    start = len(storage.ops)
    data = np.arange(8192, dtype=np.uint8)
    store.commit([TensorSource("w", "uint8", (8192,), lambda: data)], [keys.signer])
    ops = storage.ops[start:]
    assert records_without_bundle(base, ops, cuts(ops)), "the planted record-before-bundle bug went unnoticed"
