"""Boot-to-serving time (per stage) and persist pause, with real supervisord and the real service.

    python bench/boot_persist.py                                         # built-in model (~2 MiB)
    python bench/boot_persist.py --model appliance.models.demo:build_large   # ~1 GB of state
    python bench/boot_persist.py --drop-caches                           # cold page cache (root)
    python bench/boot_persist.py --model-init meta                       # skip the factory's init at boot

Runs: node-init -> seed -> supervisord -> boot (cold process) -> N x (adapt, export, commit) under
a steady inference load -> power cut -> supervisord -> boot again. Prints one JSON document:
boot stages for both boots, per-export capture pause, commit time and bytes, and the request
latency seen by a client while each persist ran (vs. before). Numbers depend on the machine and
on what else runs on it; the JSON records cpu count and load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.cli.localnode import LocalNode

X = [[0.01 * i for i in range(16)]]


def _inputs(node: LocalNode) -> list[list[float]]:
    width = 1024 if "large" in node.config.model else 16
    return [[0.001 * i for i in range(width)]]


class Load:
    """A client sending one inference request after another, recording (finish time, latency)."""

    def __init__(self, node: LocalNode) -> None:
        self.node, self.x = node, _inputs(node)
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = self.node.call("/v1/infer", {"inputs": self.x}, timeout=120)
            except Exception:
                status = 0
            self.samples.append((time.time(), time.perf_counter() - t0))
            self.errors += status != 200

    def between(self, start: float, end: float) -> list[float]:
        return [lat for t, lat in self.samples if start <= t <= end]


def boot(node: LocalNode, drop_caches: bool) -> dict[str, Any]:
    if drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    node.start()
    t0 = time.perf_counter()
    code, outcome = node.boot(timeout=3600)
    if code != 0:
        raise SystemExit(f"boot failed ({code}): {outcome}")
    outcome["wall_s_including_cli"] = round(time.perf_counter() - t0, 3)
    return outcome


def persist_rounds(node: LocalNode, rounds: int) -> list[dict[str, Any]]:
    load = Load(node)
    load.thread.start()
    time.sleep(2.0)
    baseline = [lat for _, lat in load.samples]
    out = []
    x = _inputs(node)
    for _ in range(rounds):
        node.control_call("/v1/adapt", {"inputs": x, "targets": [[0.5, -0.5, 0.25, 0.0]]}, timeout=600)
        before = len(node.events("persist.committed"))
        t_export = time.time()
        status, exported = node.control_call("/v1/export", {}, timeout=3600)
        assert status == 200, exported
        committed = node.wait_event("persist.committed", after=before, timeout=3600)
        started = node.events("persist.started")[-1]["ts_unix"]
        during = load.between(t_export, committed["ts_unix"])
        out.append(
            {
                "export_pause_s": exported["pause_s"],
                "export_write_s": exported["write_s"],
                "commit_s": committed["fields"]["seconds"],
                "export_to_committed_s": round(committed["ts_unix"] - t_export, 3),
                "persist_window_s": round(committed["ts_unix"] - started, 3),
                "written_bytes": committed["fields"]["written_bytes"],
                "frames": committed["fields"]["frames"],
                "requests_during": len(during),
                "latency_max_during_s": round(max(during), 4) if during else None,
                "latency_median_during_s": round(statistics.median(during), 4) if during else None,
            }
        )
    load.stop.set()
    load.thread.join(600)
    for r in out:
        r["latency_median_baseline_s"] = round(statistics.median(baseline), 4) if baseline else None
    if load.errors:
        out.append({"failed_requests": load.errors})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="appliance.models.demo:build")
    parser.add_argument("--exports", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before each boot (root)")
    parser.add_argument("--model-init", choices=("factory", "meta"), default="factory", help="node.json model_init")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ap-bench-", dir="/tmp"))
    node = LocalNode.create(
        work / "node", model=args.model, persist_interval=3600, ready_timeout=3600, model_init=args.model_init
    )
    result: dict[str, Any] = {"model": args.model, "model_init": args.model_init, "cpus": os.cpu_count()}
    result["loadavg_start"] = os.getloadavg()
    try:
        t0 = time.perf_counter()
        result["seed"] = node.seed() | {"wall_s": round(time.perf_counter() - t0, 3)}
        result["boot_cold_process"] = boot(node, args.drop_caches)
        result["persist"] = persist_rounds(node, args.exports)
        node.power_cut()
        result["boot_after_power_cut"] = boot(node, args.drop_caches)
        result["loadavg_end"] = os.getloadavg()
    finally:
        node.stop()
    json.dump(result, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    main()
