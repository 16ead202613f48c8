"""Benchmark the verified GPU restore of a 7B-shaped bf16 state (checks the seed's 3.6 s claim).

Run on the device:  python hil/bench_gpu_restore.py [--layers 32] [--policy compact] [--workdir DIR]
Prints per-stage GB/s and total seconds for: CPU restore (private), CPU zero-copy (fast only),
and the nvCOMP path (CPU cores verify, the GPU decodes). --layers 32 is Llama-2-7B (13.5 GB);
the store needs ~1.1x that on disk. Without CUDA/nvCOMP the GPU line says why it was skipped.

Issue 16 (the same lines as the CPU bench, ``python -m bench``, so a GPU run compares line by
line): ``appliance report``'s prediction for each CPU path (goal 5: measured <= predicted worst),
with the stage CPU-seconds (goal 4's explanation). The watchdog's delta persist (goal 2) runs
separately: ``python3 -m bench.persist_delta`` (``hil/device_run.sh`` runs both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from appliance import api
from appliance.codec.gpu import available
from appliance.format.restore_time import estimate
from appliance.signing import SigningKey
from appliance.sources.tensors import sources_from_dict
from appliance.store.config import StoreConfig
from appliance.store.probe import probe, shape_of
from appliance.store.store import Store

HIDDEN, FFN, VOCAB = 4096, 11008, 32000


def layer_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (HIDDEN, HIDDEN)
        shapes[p + "mlp.gate_proj.weight"] = (FFN, HIDDEN)
        shapes[p + "mlp.up_proj.weight"] = (FFN, HIDDEN)
        shapes[p + "mlp.down_proj.weight"] = (HIDDEN, FFN)
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    return shapes


def synthetic(layers: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for name, shape in layer_shapes(layers).items():
        if len(shape) == 1:
            yield name, torch.ones(shape, dtype=torch.bfloat16)
        else:
            yield name, (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--policy", choices=["compact", "fast"], default="compact")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        key = SigningKey.generate()
        store = Store.init(work / "store", [key.public], StoreConfig(model="bench", policy=args.policy))
        state = dict(synthetic(args.layers))
        raw = sum(t.numel() * t.element_size() for t in state.values())
        t0 = time.perf_counter()
        store.commit(sources_from_dict(state), [key])
        print(f"state {raw / 1e9:.2f} GB bf16, committed ({args.policy}) in {time.perf_counter() - t0:.1f} s")
        del state
        results = {}
        loaded = api.load(store)
        results["cpu private"] = loaded.stats.to_dict()
        del loaded
        if args.policy == "fast":
            loaded = api.load(store, zero_copy=True)
            results["cpu zero-copy"] = loaded.stats.to_dict()
            del loaded
        if torch.cuda.is_available() and available().ok:
            loaded = api.load_to_device(store, "cuda")
            from appliance.codec.gpu import NvcompBatchDecoder
            from appliance.gpu.restore import restore_to_device

            del loaded
            opened = store.select().opened
            decoder = NvcompBatchDecoder(torch.cuda.current_stream().cuda_stream)
            _, gstats = restore_to_device(store.storage, opened, "cuda", decoder)
            results["gpu nvCOMP"] = gstats.to_dict()
        else:
            print(f"GPU path skipped: cuda={torch.cuda.is_available()}, nvCOMP: {available().reason}")
        for name, r in results.items():
            stages = r.get("stage_gb_per_s") or {
                k: round(raw / v / 1e9, 2) if v else None for k, v in r["stage_seconds"].items()
            }
            print(f"{name:14s} total {r['seconds']:.2f} s = {r['gb_per_s']:.2f} GB/s verified; per stage GB/s {stages}")
        opened = store.select().opened
        manifest = opened.verified.manifest
        rates = probe(store.storage, opened.slot, manifest).rates
        for name in ("cpu private", "cpu zero-copy"):
            if name in results:
                e = estimate(shape_of(manifest, zero_copy=name == "cpu zero-copy"), rates, cold=False)
                measured = results[name]["seconds"]
                met = "met " if measured <= e.worst else "MISS"
                print(f"[{met}] issue 16 (5): `appliance report` bound holds ({name}): measured {measured:.2f} s, "
                      f"predicted expected {e.expected:.2f} s / worst {e.worst:.2f} s ({e.bound}-bound)")  # fmt: skip
        print(json.dumps(results, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
