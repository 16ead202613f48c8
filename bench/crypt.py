"""Encryption at rest (issue 18): encrypted vs plain commit and restore, crypto-erase, AES-GCM ceiling.

    python -m bench.crypt                   # 256 MiB bf16 state, 3 restores each (median)
    python -m bench.crypt --size-mb 2048    # the 2 GB state of the issue
    python -m bench.crypt --size-mb 64      # smoke run

Same run, same data, interleaved (plain, sealed, then sealed, plain ...) with ``sync`` before each
timing, so drift and write-back on a shared machine hit both alike: for ``fast`` and ``compact``,
the first (full) commit into a fresh store (median of ``--repeats``) and the verified restore
(``api.load`` into fresh CPU tensors, warm page cache, median of ``--repeats``); the ratio sealed/
plain per policy (goal: restore >= 0.85); ``erase --crypto`` time on the sealed store of that size;
and the ceiling: AES-256-GCM ``decrypt_into`` and SHA-256 over 4 MiB frames, 1 thread and all cores.
Prints one JSON document. Not part of CI; figures from a shared, loaded machine are smoke only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from appliance import api
from appliance.crypto import FileKek
from appliance.crypto.aead import new_data_key
from appliance.signing import SigningKey
from appliance.sources.tensors import sources_from_dict
from appliance.store.config import StoreConfig
from appliance.store.keys import crypto_erase
from appliance.store.store import Store

FRAME = 4 << 20


def _state(mb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = mb * 1024 * 1024 // 2
    return {f"layer.{i}.weight": (torch.randn(n // 8, generator=g) * 0.02).to(torch.bfloat16) for i in range(8)}


def _rate(nbytes: int, fn: Any, threads: int, reps: int) -> float:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: fn(), range(threads)))  # warm
        t0 = time.perf_counter()
        list(pool.map(lambda _: fn(), range(threads * reps)))
        return threads * reps * nbytes / (time.perf_counter() - t0) / 1e9


def ceiling() -> dict[str, float]:
    """AES-256-GCM open (what a sealed restore adds per byte) and SHA-256 (what every restore pays)."""
    cipher = new_data_key()
    plain = os.urandom(FRAME)
    sealed = cipher.seal(plain, b"aad")
    cores = os.cpu_count() or 1
    out_bufs = [bytearray(FRAME) for _ in range(cores)]
    counter = iter(range(1 << 30))

    def open_one() -> None:
        cipher.open_into(sealed, b"aad", out_bufs[next(counter) % cores])

    def seal_one() -> None:
        cipher.seal(plain, b"aad")

    def sha_one() -> None:
        hashlib.sha256(sealed).digest()

    return {
        "aes_gcm_open_gbps_1": round(_rate(FRAME, open_one, 1, 32), 3),
        f"aes_gcm_open_gbps_{cores}": round(_rate(FRAME, open_one, cores, 32), 3),
        "aes_gcm_seal_gbps_1": round(_rate(FRAME, seal_one, 1, 32), 3),
        "sha256_gbps_1": round(_rate(FRAME, sha_one, 1, 16), 3),
        f"sha256_gbps_{cores}": round(_rate(FRAME, sha_one, cores, 16), 3),
    }


def _store(work: Path, name: str, policy: str, sealed: bool, key: SigningKey) -> Store:
    config = StoreConfig(model="bench", frame_size=FRAME, policy=policy, encrypt=sealed)
    kek = FileKek.create(work / f"{name}.kek") if sealed else None
    return Store.init(work / name, [key.public], config, kek=kek)


def run(mb: int, repeats: int, work: Path) -> dict[str, Any]:
    state = _state(mb)
    raw = sum(t.numel() * t.element_size() for t in state.values())
    key = SigningKey.generate()
    out: dict[str, Any] = {"raw_bytes": raw, "repeats": repeats, "policies": {}}
    for policy in ("fast", "compact"):
        commits: dict[str, list[float]] = {"plain": [], "sealed": []}
        for r in range(repeats):  # fresh stores each round, order alternated, dirty pages flushed first
            for s in ("plain", "sealed") if r % 2 == 0 else ("sealed", "plain"):
                shutil.rmtree(work / f"{policy}-{s}", ignore_errors=True)
                (work / f"{policy}-{s}.kek").unlink(missing_ok=True)
                store = _store(work, f"{policy}-{s}", policy, s == "sealed", key)
                os.sync()
                t0 = time.perf_counter()
                store.commit(sources_from_dict(state), [key])
                commits[s].append(raw / (time.perf_counter() - t0) / 1e9)
        commit = {s: statistics.median(v) for s, v in commits.items()}
        restores: dict[str, list[float]] = {"plain": [], "sealed": []}
        for _ in range(repeats):
            for s in ("plain", "sealed"):
                opened = Store.open(work / f"{policy}-{s}")
                os.sync()
                t0 = time.perf_counter()
                loaded = api.load(opened)
                restores[s].append(raw / (time.perf_counter() - t0) / 1e9)
                del loaded
        restore = {s: statistics.median(v) for s, v in restores.items()}
        out["policies"][policy] = {
            "commit_gbps": {s: round(v, 3) for s, v in commit.items()},
            "restore_gbps": {s: round(v, 3) for s, v in restore.items()},
            "restore_runs_gbps": {s: [round(x, 3) for x in v] for s, v in restores.items()},
            "commit_runs_gbps": {s: [round(x, 3) for x in v] for s, v in commits.items()},
            "commit_ratio": round(commit["sealed"] / commit["plain"], 3),
            "restore_ratio": round(restore["sealed"] / restore["plain"], 3),
            "restore_goal_met": restore["sealed"] / restore["plain"] >= 0.85,
        }
        sealed_root = work / f"{policy}-sealed"
        if policy == "compact":
            t0 = time.perf_counter()
            done = crypto_erase(Store.open(sealed_root).storage)
            seconds = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in sealed_root.rglob("*") if p.is_file())
            out["crypto_erase"] = {"seconds": round(seconds, 6), "destroyed": done["destroyed"], "store_bytes": size}
        for s in ("plain", "sealed"):
            shutil.rmtree(work / f"{policy}-{s}", ignore_errors=True)
    out["ceiling"] = ceiling()
    out["loadavg"] = os.getloadavg()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crypt", description=__doc__)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-crypt-", dir=args.workdir))
    try:
        print(json.dumps(run(args.size_mb, args.repeats, work), indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
