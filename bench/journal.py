"""The adaptation journal (issue 17): throughput with and without it, replay at boot, bytes written per hour.

    python -m bench.journal                      # 8 s per throughput point, replay of 100/1000/10000 records
    python -m bench.journal --quick              # smoke run (2 s per point, 100/1000 records)

Same run, same node layout, the real service path (``ServiceRuntime.adapt`` in process, the demo
model): adaptation throughput without the journal and with it at a 10 ms group commit, for 1, 8
and 32 concurrent clients (goal: at most 10 % slower); boot-to-serving (``bring_up``: restore,
replay, ready) with N journal records to replay; and bytes written per hour — persist deltas
every 300 s without a journal (the default), a persist per step (what zero loss costs without a
journal) and ``persist_interval: "auto"`` with the journal (zero acknowledged steps lost) — from a
measured delta commit and record size. Prints one JSON document. Not part of CI; figures from the
shared, loaded 2-core machine are smoke only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from appliance.cli.boot_commands import seed
from appliance.cli.main import main as cli
from appliance.format.handoff import Admit, Handoff
from appliance.format.interval import IntervalInputs, choose
from appliance.node.config import NodeConfig, load_config
from appliance.node.rundir import RunDir
from appliance.service.runtime import ServiceRuntime
from appliance.store.store import Store

X = [[0.01 * i for i in range(16)] for _ in range(8)]
Y = [[1.0, -1.0, 0.5, 0.0] for _ in range(8)]


def make_node(root: Path, journal: bool, group_ms: float = 10.0) -> NodeConfig:
    argv = ["node-init", str(root), *(["--journal"] if journal else [])]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result only
        assert cli(argv) == 0
    config = load_config(root / "node.json")
    seed(config)
    entry = next(e for e in Store.open(config.store).log() if e.get("generation") == 1)
    RunDir(config.run_dir).write_handoff(Handoff("bench", "A", 1, entry["manifest_digest"], Admit.SELF, "t"))
    return dataclasses.replace(config, journal_group_commit_ms=group_ms)


def up(config: NodeConfig) -> ServiceRuntime:
    rt = ServiceRuntime(config)
    rt.bring_up()
    assert rt.phase.value == "serving", rt.error
    return rt


def throughput(rt: ServiceRuntime, clients: int, seconds: float) -> float:
    count = [0] * clients
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        while time.monotonic() < deadline:
            rt.adapt(X, Y)
            count[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.monotonic() - t0)


def adapt_n(rt: ServiceRuntime, n: int, clients: int = 16) -> None:
    left = [n]
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            rt.adapt(X, Y)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def boot_with(work: Path, n: int) -> dict[str, Any]:
    config = make_node(work / f"replay-{n}", journal=True)
    live = up(config)
    adapt_n(live, n)
    if live.journal is not None:
        live.journal.close()
    again = up(config)
    t = again.timings
    rec = again.journal.journal.recovery if again.journal else None
    return {"records": n, "replayed": rec.replayed if rec else 0, "replay_s": round(t["restored"] - t["replaying"], 4),
            "replay_s_per_record": round((rec.seconds / rec.replayed) if rec and rec.replayed else 0.0, 6),
            "restore_s": round(t["replaying"] - t["restoring"], 4),
            "bring_up_s": round(t["serving"] - t["loading"], 4)}  # fmt: skip


def bytes_per_hour(work: Path, steps_per_s: float) -> dict[str, Any]:
    """Persist deltas and journal bytes per hour from a measured delta commit and measured record sizes."""
    from appliance.persist.committer import Committer

    config = make_node(work / "bytes", journal=True)
    rt = up(config)
    adapt_n(rt, 20, clients=1)
    receipt = rt.export()
    committer = Committer(config, rt.events, receipts=_Receipts(rt))
    result = committer.commit_file(Path(config.outbox) / receipt["file"])
    assert result is not None
    delta = float(result.written_bytes)
    record = sum(p.stat().st_size for p in Path(config.journal_dir).glob("seg-*.ajl")) / 20.0
    pause = receipt["pause_s"]
    inputs = IntervalInputs(capture_pause_s=pause, persist_s=result.seconds, persist_bytes=delta, mtbf_s=86400.0,
                            steps_per_s=steps_per_s, replay_s_per_record=0.003, record_bytes=record,
                            journal_max_bytes=config.journal_max_bytes, max_replay_s=config.max_replay_s)  # fmt: skip
    auto = choose(inputs)
    per_h = 3600.0
    return {
        "delta_bytes": delta, "record_bytes": record, "steps_per_s": steps_per_s, "persist_s": round(result.seconds, 4),
        "fixed_300s_no_journal": {"bytes_per_hour": per_h / 300 * delta, "worst_steps_lost": 300 * steps_per_s},
        "persist_every_step_no_journal": {"bytes_per_hour": per_h * steps_per_s * delta, "worst_steps_lost": 0},
        "auto_with_journal": {"interval_s": round(auto.interval_s, 1), "bound": auto.bound,
                              "bytes_per_hour": per_h / auto.interval_s * delta + per_h * steps_per_s * record,
                              "worst_steps_lost": 0, "worst_replay_s": round(auto.worst_replay_s, 3)},
    }  # fmt: skip


class _Receipts:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.rt = rt

    def receipt(self, name: str) -> dict[str, Any] | None:
        return self.rt.receipt(name)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.journal", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--clients", default="1,8,32")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-bench-journal-", dir=args.workdir))
    seconds = 2.0 if args.quick else 8.0
    out: dict[str, Any] = {"load_before": os.getloadavg(), "throughput": []}
    try:
        plain, journaled = up(make_node(work / "plain", False)), up(make_node(work / "journal", True))
        for clients in (int(c) for c in args.clients.split(",")):
            a, b, a2 = (throughput(rt, clients, seconds) for rt in (plain, journaled, plain))  # plain twice: drift
            base = statistics.fmean([a, a2])
            row = {"clients": clients, "without_steps_per_s": round(base, 1), "with_journal_steps_per_s": round(b, 1)}
            out["throughput"].append(row | {"ratio": round(b / base, 3)})
        ns = (100, 1000) if args.quick else (100, 1000, 10000)
        out["boot_with_records"] = [boot_with(work, n) for n in ns]
        steady = out["throughput"][0]["with_journal_steps_per_s"]
        out["bytes_per_hour"] = bytes_per_hour(work, steps_per_s=min(1.0, steady))
        out["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
