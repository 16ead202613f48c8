"""The commit record: the last file a commit writes, and the only proof that it finished.

Owns: ``CommitRecord`` and its self-checking serialisation. Does not own where it is stored
(``appliance.store.layout``) or the write order (``appliance.store.commit``).

A record binds slot + generation + the SHA-256 and size of the exact bundle file, so a
manifest spliced in from another slot or generation, a torn record, or a record whose bundle
was replaced are all detected (mix-and-match, docs/design.md §7). The ``record_digest`` field
is the SHA-256 of the canonical JSON of all other fields: a torn or garbage-extended write
fails to parse or fails that check, and is treated as "not committed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys, strict_loads
from appliance.format.digest import Digest
from appliance.format.manifest import MAX_GENERATION
from appliance.limits import DEFAULT_LIMITS, Limits

RECORD_FORMAT = "appliance.commit"
RECORD_VERSION = 1
SLOT_NAMES = ("A", "B")


@dataclass(frozen=True)
class CommitRecord:
    slot: str
    generation: int
    bundle_digest: Digest  # SHA-256 of the bundle file's bytes
    bundle_size: int
    manifest_digest: Digest  # Manifest.digest(): the id children name as parent
    committed: str  # wall-clock time of the commit (informational; never used to order)

    def _body(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "slot": self.slot,
            "generation": self.generation,
            "bundle_digest": self.bundle_digest.hex,
            "bundle_size": self.bundle_size,
            "manifest_digest": self.manifest_digest.hex,
            "committed": self.committed,
        }

    def to_bytes(self) -> bytes:
        body = self._body()
        body["record_digest"] = Digest.of(canonical_bytes(body)).hex
        return canonical_bytes(body) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> CommitRecord:
        obj = strict_loads(data, what="commit record", max_bytes=limits.commit_record_max_bytes, max_depth=2)
        keys = {
            "format",
            "version",
            "slot",
            "generation",
            "bundle_digest",
            "bundle_size",
            "manifest_digest",
        }
        d = require_keys(obj, "commit record", keys | {"committed", "record_digest"})
        if d["format"] != RECORD_FORMAT or d["version"] != RECORD_VERSION:
            raise ManifestError("not a v1 commit record")
        if d["slot"] not in SLOT_NAMES:
            raise ManifestError(f"commit record names an unknown slot {d['slot']!r:.10}")
        record = cls(
            slot=d["slot"],
            generation=get_int(d, "generation", "commit record", 1, MAX_GENERATION),
            bundle_digest=Digest.parse(d["bundle_digest"], "commit record bundle_digest"),
            bundle_size=get_int(d, "bundle_size", "commit record", 1, limits.manifest_max_bytes),
            manifest_digest=Digest.parse(d["manifest_digest"], "commit record manifest_digest"),
            committed=get_str(d, "committed", "commit record", 64),
        )
        if Digest.parse(d["record_digest"], "record_digest") != Digest.of(canonical_bytes(record._body())):
            raise ManifestError("commit record fails its own checksum (torn or altered write)")
        if record.to_bytes() != bytes(data):  # byte-exact: a torn newline or re-serialisation is not a commit
            raise ManifestError("commit record is not byte-for-byte in canonical form (torn or altered write)")
        return record
