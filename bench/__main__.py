"""``python -m bench [--quick] [--out FILE] [--workdir DIR] [--skip restic,borg,zipnn]``.

Prints the table and the goals, and writes the JSON result (default ``out/bench-<time>.json``).
Big temporary files live in a work directory that is removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import LoadMeter
from bench.suite import Suite
from bench.table import goals, goals_table, rows_table, series_table


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small data (~0.2 GB), 4-step series: about a minute")
    ap.add_argument("--out", type=Path, help="JSON result file")
    ap.add_argument("--workdir", type=Path, help="where the big temporary files go (default: system temp)")
    ap.add_argument("--skip", default="", help="comma-separated peers not to run: restic,borg,zipnn")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--cold", action="store_true", help="drop files from the page cache before each restore")
    ap.add_argument("--repeats", type=int, help="restores per system, the median is reported (default: 3, --quick: 1)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-bench-", dir=args.workdir))
    meter = LoadMeter()
    try:
        skip = {s for s in args.skip.split(",") if s}
        repeats = args.repeats or (1 if args.quick else 3)
        suite = Suite(work, args.quick, skip, log=lambda m: print(m, flush=True), cold=args.cold, repeats=repeats)
        result = suite.run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["load"] = meter.result()
    result["machine"] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "quick": args.quick,
        "page_cache": "cold" if args.cold else "warm",
        "restore_repeats": repeats,
    }
    items = goals(result)
    result["goals"] = [{"goal": n, "met": ok, "detail": d} for n, ok, d in items]
    print()
    print(rows_table(result["rows"]))
    print()
    print(series_table(result["series"]))
    print()
    print(goals_table(items))
    for peer, reason in result["skipped"].items():
        print(f"skipped {peer}: {reason}")
    load = result["load"]
    print(
        f"load: {load['foreign_cores_average']} cores used by other processes on average during the run "
        f"(loadavg {' '.join(load['loadavg_start'])} -> {' '.join(load['loadavg_end'])})"
    )
    out = args.out or Path("out") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
