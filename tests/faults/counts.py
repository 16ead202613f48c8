"""The fault suites' tally: every test adds what it exercised; the session prints the table.

The numbers printed at the end of a run are the ones docs/reliability.md quotes. Set
``APPLIANCE_FAULT_COUNTS=path.json`` to also write them as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter

COUNTS: Counter[str] = Counter()
SKIPS: dict[str, str] = {}

# (key, label) in print order; keys not listed are printed after these.
LABELS = [
    ("write paths", "write paths recorded"),
    ("ops", "operations logged on them"),
    ("cut points", "cut points (every operation boundary of every path)"),
    ("pull.ops", "operations logged on the remote pull's local side (of the above)"),
    ("states.cut", "crash states: cut, all issued ops persisted"),
    ("states.durable", "crash states: cut, only fsync-covered ops persisted"),
    ("states.unsynced", "crash states: durable + random subset of unsynced ops"),
    ("states.ordering", "crash states: ALICE ordering (op i lost, later ops kept)"),
    ("states.torn", "crash states: torn / garbage-extended / sector-trashed writes"),
    ("states.distinct", "distinct crash images booted"),
    ("recovery.recrash", "second power cuts during recovery"),
    ("recovery.next_persist", "next persists after a crash (then booted)"),
    ("pull.reruns", "pulls rerun after a cut mid-pull (then booted: the pulled one)"),
    ("machine.examples", "state-machine examples"),
    ("machine.steps", "state-machine steps"),
    ("machine.crashes", "state-machine crashes"),
    ("ext4.cuts", "real ext4 shutdown cuts (EXT4_IOC_SHUTDOWN, NOLOGFLUSH)"),
    ("ioerr.injected", "I/O errors injected (EIO, ENOSPC)"),
    ("damage.cases", "damage cases (action x location)"),
    ("damage.detected", "damage cases detected"),
    ("hostile.cases", "hostile inputs (fuzzed manifests/envelopes, names, bombs, files)"),
    ("signing.attacks", "signing attacks"),
    ("scrub.repairs", "scrub repairs checked"),
    ("oracle.violations", "oracle violations"),
    ("commit regressions", "regression tests for commit bugs the suites found"),
    ("negative controls caught", "negative controls caught (sabotaged protocols must fail)"),
]


def add(key: str, n: int = 1) -> None:
    COUNTS[key] += n


def skipped(key: str, reason: str) -> None:
    SKIPS[key] = reason


def render() -> list[str]:
    if not COUNTS and not SKIPS:
        return []
    lines = ["fault-suite counts (this run):"]
    known = {k for k, _ in LABELS}
    for key, label in LABELS:
        if key in SKIPS:
            lines.append(f"  {label:<66} skipped: {SKIPS[key]}")
        elif key in COUNTS or key == "oracle.violations":
            lines.append(f"  {label:<66} {COUNTS[key]:>8,}")
    for key in sorted(set(COUNTS) - known):
        lines.append(f"  {key:<66} {COUNTS[key]:>8,}")
    return lines


def dump() -> None:
    path = os.environ.get("APPLIANCE_FAULT_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"counts": dict(COUNTS), "skipped": SKIPS}, f, indent=2, sort_keys=True)
