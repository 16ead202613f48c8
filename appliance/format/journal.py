"""The adaptation journal's record format and the rules that decide which records replay.

Owns: encoding and decoding one journal record (``encode_record`` / ``decode_at``), the segment
header, step and outcome payloads, the segment file-name rule and the journal point a
checkpoint names. Which records replay (``walk``) is ``appliance.format.journal_walk``. Pure:
no I/O, no torch; ``appliance.journal`` does the files and the tensors.

Record layout (little-endian; docs/design.md §15.1)::

    off  size  field
      0     4  magic  b"AJR1"
      4     1  kind   1 = segment header, 2 = adaptation step, 3 = step outcome (version 3)
      5     3  zero
      8    16  lineage   (random id of one linear history of steps)
     24     8  index     u64: header -> first step index of the segment; step -> its index
     32     4  length    u32: payload bytes (<= MAX_PAYLOAD)
     36     4  head_crc  CRC-32 of bytes 0..35 (a torn length is caught before it is trusted)
     40     n  payload
   40+n     4  crc       CRC-32 of bytes 0..40+n   (torn or bit-rotten record)
   44+n    32  mac       HMAC-SHA256(journal key, bytes 0..40+n)  (a record nobody with the key wrote)

A segment whose header names a ``seal`` (version 2: the store is encrypted, docs/design.md §14)
holds its step payloads sealed: ``nonce(12) || AES-256-GCM(payload) || tag(16)`` under that data
key's journal sealing key, associated data ``step_aad(lineage, index)``; version 1 headers (no
``seal``) stay readable and their payloads clear.

A version 3 segment (what the service writes now; ``seal`` optional) is *written ahead*: a step
record holds the step's inputs, seed and counter with an empty result and is appended before the
step runs, so its fsync overlaps the step; the step's result (or the type of the exception it
raised) follows in an outcome record (kind 3, same lineage and index, immediately after its step
record; sealed with ``outcome_aad``). Versions 1 and 2 carry the result inside the step record.

A record is *torn* when the file ends inside it, *corrupt* when a checksum fails, *forged*
when both checksums hold but the MAC does not (only someone without the key writes such a
record on purpose: a storage attacker), and *foreign* when it is whole and authentic but
belongs to another lineage or out of order (a record copied from another segment).
"""

from __future__ import annotations

import hmac
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import canonical_bytes, get_int, get_str, require_keys, strict_loads

MAGIC = b"AJR1"
KIND_HEADER = 1
KIND_STEP = 2
KIND_OUTCOME = 3  # version 3: a step's result, right after its step record
HEAD = struct.Struct("<4sB3x16sQI")  # 36 bytes
HEAD_SIZE = HEAD.size + 4
TAIL_SIZE = 4 + 32
OVERHEAD = HEAD_SIZE + TAIL_SIZE
MAX_PAYLOAD = 64 << 20
JOURNAL_FORMAT = "appliance.journal"
JOURNAL_VERSION = 1  # clear step payloads
JOURNAL_VERSION_SEALED = 2  # the header names the data key that seals every step payload
JOURNAL_VERSION_AHEAD = 3  # step records written before their step; results in outcome records; seal optional
STEP_AAD = b"appliance/v1 journal-step"
OUTCOME_AAD = b"appliance/v1 journal-outcome"
SEGMENT_SUFFIX = ".ajl"
_SEGMENT = re.compile(r"seg-(\d{20})-([0-9a-f]{32})\.ajl")


def segment_name(first_index: int, lineage: bytes) -> str:
    """File name of a segment; names sort by first index."""
    return f"seg-{first_index:020d}-{lineage.hex()}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, bytes] | None:
    m = _SEGMENT.fullmatch(name)
    return (int(m[1]), bytes.fromhex(m[2])) if m else None


def step_aad(lineage: bytes, index: int) -> bytes:
    """Associated data of a sealed step payload: binds it to its lineage and index (no splicing)."""
    return STEP_AAD + b"\x00" + lineage + struct.pack("<Q", index)


def outcome_aad(lineage: bytes, index: int) -> bytes:
    """Associated data of a sealed outcome payload (never valid as a step's, nor the other way)."""
    return OUTCOME_AAD + b"\x00" + lineage + struct.pack("<Q", index)


def mac(key: bytes, data: bytes | memoryview) -> bytes:
    return hmac.digest(key, data, "sha256")  # the one-shot C path: no HMAC object per record


def encode_record(key: bytes, kind: int, lineage: bytes, index: int, payload: bytes) -> bytes:
    if len(lineage) != 16 or not 0 <= index < 2**63 or len(payload) > MAX_PAYLOAD:
        raise ValueError("journal record: lineage must be 16 bytes, index 0..2^63-1, payload <= MAX_PAYLOAD")
    head = HEAD.pack(MAGIC, kind, lineage, index, len(payload))
    body = head + struct.pack("<I", zlib.crc32(head)) + payload
    return body + struct.pack("<I", zlib.crc32(body)) + mac(key, body)


@dataclass(frozen=True)
class Record:
    kind: int
    lineage: bytes
    index: int
    payload: bytes
    offset: int  # where the record starts in its segment
    end: int  # where the next one starts


@dataclass(frozen=True)
class Bad:
    """Why decoding stopped at ``offset``: ``torn`` | ``corrupt`` | ``forged``."""

    kind: str
    offset: int
    detail: str


def decode_at(key: bytes, data: bytes | memoryview, offset: int) -> Record | Bad | None:  # noqa: PLR0911 (one return per outcome)
    """The record at ``offset`` of a segment's bytes, why it is unusable, or ``None`` at the clean end."""
    view = memoryview(data)
    left = len(view) - offset
    if left == 0:
        return None
    if left < HEAD_SIZE:
        return Bad("torn", offset, f"{left} bytes at the end, shorter than a record head")
    head = bytes(view[offset : offset + HEAD.size])
    magic, kind, lineage, index, length = HEAD.unpack(head)
    (head_crc,) = struct.unpack_from("<I", view, offset + HEAD.size)
    if magic != MAGIC or zlib.crc32(head) != head_crc or kind not in (KIND_HEADER, KIND_STEP, KIND_OUTCOME):
        return Bad("corrupt", offset, "record head fails its checksum")
    if length > MAX_PAYLOAD:
        return Bad("corrupt", offset, f"record length {length} exceeds {MAX_PAYLOAD}")
    end = offset + HEAD_SIZE + length + TAIL_SIZE
    if end > len(view):
        return Bad("torn", offset, f"record of {end - offset} bytes cut after {left}")
    body = view[offset : offset + HEAD_SIZE + length]
    (crc,) = struct.unpack_from("<I", view, offset + HEAD_SIZE + length)
    if zlib.crc32(body) != crc:
        return Bad("corrupt", offset, f"record {index} fails its checksum")
    tag = bytes(view[end - 32 : end])
    if not hmac.compare_digest(tag, mac(key, body)):
        return Bad("forged", offset, f"record {index} fails its MAC (not written with this node's journal key)")
    return Record(kind, lineage, index, bytes(view[offset + HEAD_SIZE : offset + HEAD_SIZE + length]), offset, end)


# --- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """What a lineage continues from: a checkpoint's content (``lineage`` None) or another lineage's record."""

    content_sha256: str | None  # the restored checkpoint's content digest
    lineage: str | None = None  # hex of the parent lineage (a fork), else None
    index: int = 0  # the parent's last record index included in the base state
    generation: int = 0  # the restored checkpoint's generation (informational)

    def to_dict(self) -> dict[str, Any]:
        return {"content_sha256": self.content_sha256, "lineage": self.lineage, "index": self.index,
                "generation": self.generation}  # fmt: skip

    @classmethod
    def from_dict(cls, obj: object) -> Base:
        d = require_keys(obj, "journal base", {"content_sha256", "lineage", "index", "generation"})
        digest, lineage = d["content_sha256"], d["lineage"]
        if not isinstance(digest, str | None) or not isinstance(lineage, str | None):
            raise ManifestError("journal base: content_sha256 and lineage must be strings or null")
        return cls(digest, lineage, get_int(d, "index", "journal base", 0, 2**63 - 1),
                   get_int(d, "generation", "journal base", 0, 2**63 - 1))  # fmt: skip


@dataclass(frozen=True)
class SegmentHeader:
    base: Base
    model: str
    threads: int  # torch intra-op threads the steps ran with (replay uses the same)
    created: str
    seal: str | None = None  # key id of the data key sealing the step payloads (version 2 or 3), else clear
    ahead: bool = False  # version 3: step records precede their step, results in outcome records

    def to_bytes(self) -> bytes:
        d = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "base": self.base.to_dict(), "model": self.model,
             "threads": self.threads, "created": self.created}  # fmt: skip
        if self.seal is not None:
            d |= {"version": JOURNAL_VERSION_SEALED, "seal": self.seal}
        if self.ahead:
            d["version"] = JOURNAL_VERSION_AHEAD
        return canonical_bytes(d)

    @classmethod
    def from_bytes(cls, data: bytes) -> SegmentHeader:
        obj = strict_loads(data, what="journal segment header", max_bytes=64 << 10, max_depth=4)
        version = obj.get("version") if isinstance(obj, dict) else None
        keys = {"format", "version", "base", "model", "threads", "created"}
        sealed = version == JOURNAL_VERSION_SEALED or (version == JOURNAL_VERSION_AHEAD and "seal" in obj)
        d = require_keys(obj, "journal segment header", keys | {"seal"} if sealed else keys)
        if d["format"] != JOURNAL_FORMAT or d["version"] not in _VERSIONS:
            raise ManifestError("not a v1, v2 or v3 journal segment")
        seal = get_str(d, "seal", "journal", 64) if "seal" in d else None
        if seal is not None and not re.fullmatch(r"[0-9a-f]{32}", seal):
            raise ManifestError("journal segment header: seal must be a data key id (32 hex digits)")
        return cls(Base.from_dict(d["base"]), get_str(d, "model", "journal", 512),
                   get_int(d, "threads", "journal", 1, 4096), get_str(d, "created", "journal", 64), seal,
                   d["version"] == JOURNAL_VERSION_AHEAD)  # fmt: skip


_VERSIONS = (JOURNAL_VERSION, JOURNAL_VERSION_SEALED, JOURNAL_VERSION_AHEAD)


@dataclass(frozen=True)
class TensorBlob:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class StepPayload:
    """One adaptation step: its tensors (inputs, targets), RNG seed and the result it produced."""

    seed: int
    step_before: int  # the model's adaptation step counter before the step
    tensors: tuple[TensorBlob, ...]
    result: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        meta, blobs, offset = [], [], 0
        for t in self.tensors:
            meta.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offset": offset,
                         "nbytes": len(t.data)})  # fmt: skip
            blobs.append(t.data)
            offset += len(t.data)
        head = canonical_bytes({"seed": self.seed, "step_before": self.step_before, "tensors": meta,
                                "result": dict(self.result)})  # fmt: skip
        return struct.pack("<I", len(head)) + head + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> StepPayload:
        if len(data) < 4:
            raise ManifestError("journal step payload is too short")
        (n,) = struct.unpack_from("<I", data, 0)
        if 4 + n > len(data):
            raise ManifestError("journal step payload head overruns the record")
        obj = strict_loads(data[4 : 4 + n], what="journal step", max_bytes=1 << 20, max_depth=6)
        d = require_keys(obj, "journal step", {"seed", "step_before", "tensors", "result"})
        blob = data[4 + n :]
        tensors = []
        for t in d["tensors"] if isinstance(d["tensors"], list) else []:
            e = require_keys(t, "journal tensor", {"name", "dtype", "shape", "offset", "nbytes"})
            off, nb = get_int(e, "offset", "tensor", 0, len(blob)), get_int(e, "nbytes", "tensor", 0, len(blob))
            if off + nb > len(blob) or not isinstance(e["shape"], list):
                raise ManifestError("journal tensor overruns its record")
            shape = tuple(int(s) for s in e["shape"])
            tensors.append(TensorBlob(get_str(e, "name", "tensor", 64), get_str(e, "dtype", "tensor", 16), shape,
                                      blob[off : off + nb]))  # fmt: skip
        result = d["result"] if isinstance(d["result"], dict) else {}
        return cls(get_int(d, "seed", "step", 0, 2**64 - 1), get_int(d, "step_before", "step", 0, 2**63 - 1),
                   tuple(tensors), result)  # fmt: skip


@dataclass(frozen=True)
class StepOutcome:
    """What a written-ahead step did (version 3): its result, or the type name of what it raised."""

    result: Mapping[str, Any] | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return canonical_bytes({"result": None if self.result is None else dict(self.result), "error": self.error})

    @classmethod
    def from_bytes(cls, data: bytes) -> StepOutcome:
        obj = strict_loads(data, what="journal step outcome", max_bytes=1 << 20, max_depth=6)
        d = require_keys(obj, "journal step outcome", {"result", "error"})
        result, error = d["result"], d["error"]
        if (
            not isinstance(result, dict | None)
            or not isinstance(error, str | None)
            or (result is None) == (error is None)
        ):
            raise ManifestError("journal step outcome: exactly one of result (an object) and error (a string)")
        return cls(result, error)


# --- journal points ------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A journal point: the records of ``lineage`` up to ``index`` are in a state (checkpoint metadata)."""

    lineage: str
    index: int

    def to_dict(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "index": self.index}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Point | None:
        j = meta.get("journal")
        if j is None:
            return None
        d = require_keys(j, "checkpoint journal point", {"lineage", "index"})
        lineage = get_str(d, "lineage", "journal point", 32)
        if not re.fullmatch(r"[0-9a-f]{32}", lineage):
            raise ManifestError("checkpoint journal point: lineage must be 32 hex digits")
        return cls(lineage, get_int(d, "index", "journal point", 0, 2**63 - 1))
