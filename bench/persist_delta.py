"""Delta persist as the persistence watchdog does it, against a full commit, in one process.

    python -m bench.persist_delta                       # 2.14 GB Llama-7B-shaped bf16 state, 4 delta steps
    python -m bench.persist_delta --layers 1 --vocab 8000 --steps 3   # ~0.5 GB, quick

Per step (1% of elements moved by 1-3 ULP, ``bench.data.fine_tune_step``) the state is written
as a real state export (``write_export``), opened and content-checked (``open_export``, what
the watchdog does before it signs) and committed twice in the same run: by a committer that
keeps its last commit (``LastCommit``, the watchdog) and by one that does not (every commit
reads, verifies and decodes its parent: the code before issue 16). Both commit into the slot
that holds their parent, the watchdog's case (the other slot serves). The full commit both are
compared with is measured at every later step too: the same export committed into a fresh store
(step 0 alone would include first-touch costs and flatter the ratio). Prints one JSON document
with per-step seconds, the medians, the floor (SHA-256 of the changed frames) and the goal line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.signing import SigningKey
from appliance.sources.export import open_export, write_export
from appliance.store.config import StoreConfig
from appliance.store.lastcommit import LastCommit
from appliance.store.store import Store
from bench import data
from bench.measure import sha256_rate

GOAL = 0.50  # issue 16 goal 2: a delta persist costs at most half a full commit


def _store(root: Path, key: SigningKey) -> Store:
    store = Store.init(root, [key.public], StoreConfig(model="bench", policy="compact"))
    store.good_provider = lambda: {"A": 1, "B": None}  # A serves: the watchdog commits into B
    return store


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _persist(store: Store, key: SigningKey, export: Path, last: LastCommit | None) -> dict[str, Any]:
    c0, t0 = _cpu(), time.perf_counter()
    opened = open_export(export, last)  # structure + content digest, as the committer checks it
    checked = time.perf_counter() - t0
    try:
        result, _ = store.commit(opened.model.sources, [key], opened.info.checkpoint_metadata(), last=last)
    finally:
        opened.close()
    return {
        "open_check_s": round(checked, 4),
        "commit_s": round(result.seconds, 4),
        "persist_s": round(time.perf_counter() - t0, 4),
        "persist_cpu_s": round(_cpu() - c0, 4),  # all threads: less sensitive to a loaded machine than wall time
        "written_bytes": result.written_bytes,
        "frames": dict(result.counts),
    }


def run(work: Path, layers: int, vocab: int, steps: int) -> dict[str, Any]:
    key = SigningKey.generate()
    state = data.llama_state(layers, vocab, seed=7)
    raw = sum(t.numel() * t.element_size() for t in state.values())
    kept, plain = _store(work / "kept", key), _store(work / "plain", key)
    last = LastCommit()
    rows = []
    for step in range(steps + 1):
        if step:
            data.fine_tune_step(state, step)
        export, _ = write_export(state, work / "outbox", model="bench", step=step, pause_s=0.0, sequence=step)
        row: dict[str, Any] = {"step": step}
        order = ("kept", "plain") if step % 2 == 0 else ("plain", "kept")  # neither always goes first
        for who in order:
            row[who] = _persist(kept, key, export, last) if who == "kept" else _persist(plain, key, export, None)
        if step:  # the full commit of this very state, the reference for the ratio
            fresh = work / f"full-{step}"
            row["full"] = _persist(_store(fresh, key), key, export, None)
            shutil.rmtree(fresh)
        export.unlink()
        print(f"step {step}: kept {row['kept']['persist_s']:.2f} s, plain {row['plain']['persist_s']:.2f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        rows.append(row)
    return summarize(rows, raw)


def summarize(rows: list[dict[str, Any]], raw: int) -> dict[str, Any]:
    later = rows[1:]
    med = {
        who: {
            k: statistics.median(r[who][k] for r in later)
            for k in ("open_check_s", "commit_s", "persist_s", "persist_cpu_s")
        }
        for who in ("kept", "plain", "full")
    }
    full = med["full"]
    frac = med["kept"]["persist_s"] / full["persist_s"]
    sha_2t = sha256_rate(2)
    changed = statistics.median(r["kept"]["frames"].get("delta", 0) + r["kept"]["frames"].get("full", 0) for r in later)
    floor_s = raw * (changed / max(1, sum(rows[1]["kept"]["frames"].values()))) / sha_2t
    return {
        "raw_bytes": raw,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "steps": rows,
        "full": full,
        "median_delta": med,
        "delta_over_full": round(frac, 4),
        "first_commit": rows[0]["kept"],
        "delta_over_full_without_memory": round(med["plain"]["persist_s"] / full["persist_s"], 4),
        "cpu_delta_over_full": round(med["kept"]["persist_cpu_s"] / full["persist_cpu_s"], 4),
        "cpu_delta_over_full_without_memory": round(med["plain"]["persist_cpu_s"] / full["persist_cpu_s"], 4),
        "floor": {
            "sha256_2t_bps": sha_2t,
            "changed_frames_share": round(changed / max(1, sum(rows[1]["kept"]["frames"].values())), 4),
            "sha256_of_changed_frames_s": round(floor_s, 4),
            "content_check_s": med["kept"]["open_check_s"],
        },
        "goal": {
            "goal": "delta persist <= 50% of a full commit (1% of elements, watchdog)",
            "met": frac <= GOAL,
            "detail": f"{frac * 100:.0f}% ({med['kept']['persist_s']:.2f} vs {full['persist_s']:.2f} s; "
            f"without the memory {med['plain']['persist_s']:.2f} s)",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.persist_delta", description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=data.VOCAB)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ap-persist-", dir=args.workdir))
    try:
        result = run(work, args.layers, args.vocab, args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1, default=str)
    print()
    g = result["goal"]
    print(f"[{'met ' if g['met'] else 'MISS'}] {g['goal']}: {g['detail']}", file=sys.stderr)


if __name__ == "__main__":
    main()
