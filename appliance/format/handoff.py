"""What the boot supervisor and the model service tell each other through small run-time files.

Owns: ``Handoff`` (boot -> service: which checkpoint to restore and who admits traffic) and
``ServiceReport`` (service -> boot, guard and persist: pid, phase, restore result), with their
JSON forms. Does not own where the files live or how they are written (``appliance.node.rundir``).

The boot process has already checked the commit record, the signature, the model id and the
anti-rollback floor of ``Handoff``'s checkpoint; the service restores exactly that checkpoint
(slot + generation + manifest digest must all match) and hashes every frame while doing so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import get_int, get_str, require_keys
from appliance.format.commit import SLOT_NAMES
from appliance.format.digest import Digest
from appliance.format.manifest import MAX_GENERATION

HANDOFF_FORMAT = "appliance.handoff"
REPORT_FORMAT = "appliance.service-report"
VERSION = 1


class Admit(str, enum.Enum):
    BOOT = "boot"  # first restore of this boot: traffic only after the boot's canary passes
    SELF = "self"  # the checkpoint was proven GOOD: a restarted service serves once restored


# ServiceReport ``error["node_fault"]`` when the store's key could not be obtained (docs/design.md §14.7):
# boot enters recovery with reason "key unavailable" and marks no slot.
KEY_FAULT = "key"


class Phase(str, enum.Enum):
    STARTING = "starting"  # the process runs; heavy imports (torch) are still loading
    LOADING = "loading"  # building the model from its entry point
    STANDBY = "standby"  # built, no handoff yet: waits for boot's (restores and answers nothing; docs/boot.md §14)
    RESTORING = "restoring"  # reading, hashing and decoding every frame
    REPLAYING = "replaying"  # replaying the adaptation journal onto the restored state (issue 17)
    RESTORED = "restored"  # verified state (and its journal replayed) in memory; answers only the canary
    SERVING = "serving"
    FAILED = "failed"


@dataclass(frozen=True)
class Handoff:
    boot_id: str
    slot: str
    generation: int
    manifest_digest: str
    admit: Admit = Admit.BOOT
    issued: str = ""

    def __post_init__(self) -> None:
        if self.slot not in SLOT_NAMES:
            raise ManifestError(f"handoff names an unknown slot {self.slot!r:.10}")
        if not self.boot_id.isalnum() or len(self.boot_id) > 64:
            raise ManifestError("handoff boot_id must be 1-64 alphanumeric characters")
        Digest.parse(self.manifest_digest, "handoff manifest_digest")

    def same_checkpoint(self, other: Handoff) -> bool:
        return (self.slot, self.generation, self.manifest_digest) == (
            other.slot,
            other.generation,
            other.manifest_digest,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HANDOFF_FORMAT,
            "version": VERSION,
            "boot_id": self.boot_id,
            "slot": self.slot,
            "generation": self.generation,
            "manifest_digest": self.manifest_digest,
            "admit": self.admit.value,
            "issued": self.issued,
        }

    @classmethod
    def from_dict(cls, obj: object) -> Handoff:
        d = require_keys(obj, "handoff", set(_handoff_keys()))
        _check_format(d, HANDOFF_FORMAT, "handoff")
        try:
            admit = Admit(d["admit"])
        except ValueError as exc:
            raise ManifestError(f"handoff admit must be boot or self, got {d['admit']!r:.20}") from exc
        return cls(
            boot_id=get_str(d, "boot_id", "handoff", 64),
            slot=get_str(d, "slot", "handoff", 4),
            generation=get_int(d, "generation", "handoff", 1, MAX_GENERATION),
            manifest_digest=get_str(d, "manifest_digest", "handoff", 64),
            admit=admit,
            issued=get_str(d, "issued", "handoff", 64),
        )


def _handoff_keys() -> list[str]:
    return ["format", "version", "boot_id", "slot", "generation", "manifest_digest", "admit", "issued"]


@dataclass(frozen=True)
class ServiceReport:
    pid: int
    phase: Phase
    handoff: Handoff | None = None
    updated: str = ""
    error: dict[str, Any] | None = None  # ApplianceError.to_dict() of a failed start
    restore: dict[str, Any] | None = None  # RestoreStats.to_dict() plus load/restore seconds
    timings: dict[str, float] = field(default_factory=dict)  # seconds since process start per phase
    # The journal replay (``Recovery.summary``: counts, where and why it stopped, what was set aside);
    # present only with a journal, so a report without one keeps its exact v1 form.
    replay: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": REPORT_FORMAT,
            "version": VERSION,
            "pid": self.pid,
            "phase": self.phase.value,
            "handoff": self.handoff.to_dict() if self.handoff else None,
            "updated": self.updated,
            "error": self.error,
            "restore": self.restore,
            "timings": self.timings,
        }
        return out if self.replay is None else out | {"replay": self.replay}

    @classmethod
    def from_dict(cls, obj: object) -> ServiceReport:
        keys = {"format", "version", "pid", "phase", "handoff", "updated", "error", "restore", "timings"}
        d = require_keys(obj, "service report", keys, optional=frozenset({"replay"}))
        _check_format(d, REPORT_FORMAT, "service report")
        try:
            phase = Phase(d["phase"])
        except ValueError as exc:
            raise ManifestError(f"service report has an unknown phase {d['phase']!r:.20}") from exc
        for key in ("error", "restore", "timings", "replay"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ManifestError(f"service report {key} must be an object")
        return cls(
            pid=get_int(d, "pid", "service report", 1, 2**31),
            phase=phase,
            handoff=None if d["handoff"] is None else Handoff.from_dict(d["handoff"]),
            updated=get_str(d, "updated", "service report", 64),
            error=d["error"],
            restore=d["restore"],
            timings=dict(d["timings"] or {}),
            replay=d.get("replay"),
        )


def _check_format(d: dict[str, Any], name: str, what: str) -> None:
    if d["format"] != name or d["version"] != VERSION:
        raise ManifestError(f"not a v1 {what}")
