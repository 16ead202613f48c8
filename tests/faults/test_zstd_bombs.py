"""Decompression bombs: every hostile zstd frame is refused before it can allocate past the frame cap.

Decoded in a child process (address space capped at 4 GiB) whose peak RSS growth is measured;
one bomb also goes through the whole store path behind a trusted signature.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import FrameError, LimitExceededError
from appliance.format.codec_name import IDENTITY, CodecSpec
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef
from appliance.store import layout

from . import counts
from .forge import Victim, plant_predicate
from .model import History

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def victim(tmp_path: Path, history: History) -> Victim:
    return Victim(tmp_path / "store", history)


BOMB_CHILD = r"""
import json, resource, sys
import numpy as np
from appliance.codec.frames import Scratch, decode_into
from appliance.format.codec_name import CodecSpec
from appliance.errors import ApplianceError
cases = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, (hexdata, codec, raw_size) in cases.items():
    dest = np.zeros(raw_size, np.uint8)
    try:
        decode_into(bytes.fromhex(hexdata), CodecSpec.parse(codec), dest, Scratch())
        out[name] = "ok"
    except ApplianceError as exc:
        out[name] = type(exc).__name__
    except BaseException as exc:
        out[name] = "UNTYPED " + type(exc).__name__ + ": " + str(exc)[:200]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"results": out, "rss_growth_kib": peak - base}))
"""

MAGIC = b"\x28\xb5\x2f\xfd"


def _block(data: bytes, kind: int = 0, last: bool = True, size: int | None = None) -> bytes:
    header = ((len(data) if size is None else size) << 3) | (kind << 1) | int(last)
    return header.to_bytes(3, "little") + data


def _frame(blocks: bytes, *, fcs: int | None, window_log: int = 17, dict_id: int = 0) -> bytes:
    fhd = (3 << 6 if fcs is not None else 0) | (1 if dict_id else 0)
    header = MAGIC + bytes([fhd, (window_log - 10) << 3])
    if dict_id:
        header += bytes([dict_id])
    if fcs is not None:
        header += fcs.to_bytes(8, "little")
    return header + blocks


def bombs(raw: int = 4096) -> dict[str, tuple[bytes, str, int]]:
    import zstandard

    payload = os.urandom(raw)
    legit = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(payload)
    zeros = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(256 << 20))
    rle_storm = _frame(b"".join(_block(b"\0", 1, False, 128 * 1024) for _ in range(10_000)) + _block(b""), fcs=raw)
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"skip" + legit
    z = "zstd-1"
    return {
        "forged content size 1 GiB": (_frame(_block(payload), fcs=1 << 30), z, raw),
        "forged content size 2^63": (_frame(_block(payload), fcs=1 << 63), z, raw),
        "unknown content size": (_frame(_block(payload), fcs=None), z, raw),
        "window log 31": (_frame(_block(payload), fcs=raw, window_log=31), z, raw),
        "256 MiB zero bomb": (zeros, z, raw),
        "10,000 RLE blocks of 128 KiB": (rle_storm, z, raw),
        "concatenated frames": (legit + legit, z, raw),
        "skippable frame first": (skippable, z, raw),
        "trailing garbage": (legit + b"junk", z, raw),
        "dictionary id": (_frame(_block(payload), fcs=raw, dict_id=7), z, raw),
        "truncated frame": (legit[:-10], z, raw),
        "reserved block type": (_frame(_block(payload, kind=3), fcs=raw), z, raw),
        "oversized raw block": (_frame(_block(os.urandom(200_000)), fcs=raw), z, raw),
        "less content than declared": (_frame(_block(payload[:100]), fcs=raw), z, raw),
        "more content than declared": (_frame(_block(payload) + _block(payload), fcs=raw), z, raw),
        "uncompressed frame of the wrong size": (payload + b"x", IDENTITY.name, raw),
    }


def test_zstd_bombs_are_refused_with_bounded_memory() -> None:
    """Every bomb ends in FrameError/LimitExceededError before it can allocate beyond the frame cap."""
    cases = {name: (data.hex(), codec, raw) for name, (data, codec, raw) in bombs().items()}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    counts.add("hostile.cases", len(cases))
    typed = {FrameError.__name__, LimitExceededError.__name__}
    wrong = {n: r for n, r in report["results"].items() if r not in typed}
    assert not wrong, f"bombs not refused with a typed error: {wrong}"
    assert report["rss_growth_kib"] < 64 * 1024, f"decoding bombs grew RSS by {report['rss_growth_kib']} KiB"


def test_a_bomb_behind_a_trusted_signature_falls_back(victim: Victim) -> None:
    """Even a trusted-signed manifest naming a bomb frame only costs that checkpoint."""
    counts.add("hostile.cases")
    data, codec, raw = bombs()["forged content size 1 GiB"]
    m3 = victim.manifest(3)
    predicate = m3.to_dict()
    target = next(f for f in predicate["tensors"][0]["frames"] if f["raw_size"] == raw and "base" not in f)
    bomb = FrameRef(Digest.of(data), len(data), Digest(target["raw_digest"]), raw, CodecSpec.parse(codec))
    target.update(bomb.to_dict())
    predicate["generation"] = 4
    predicate["totals"]["stored_bytes"] = sum(
        {f["digest"]: f["size"] for t in predicate["tensors"] for f in t["frames"]}.values()
    ) + sum(b["size"] for b in predicate["bases"])
    (victim.root / layout.frame_path("A", bomb.digest)).write_bytes(data)
    plant_predicate(victim, predicate, [victim.signer])
    victim.assert_boots_honest(3)
