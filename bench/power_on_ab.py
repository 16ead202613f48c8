"""Power-on to serving of two source trees, interleaved: which commit boots faster on this machine?

    git worktree add /tmp/before 630e87f
    python bench/power_on_ab.py /tmp/before . --rounds 5            # root: drops the page cache

Each tree gets its own development node (the 1 GB demo model, ``model_init: meta``, seeded once
by that tree's code). Each round, for each tree in turn: drop the page cache, start supervisord
and ``appliance boot`` together (as systemd does: boot waits for supervisord's socket), time
from supervisord's spawn to boot's exit with the service serving, then cut the power (SIGKILL
of the process group) and empty the run directory as a power loss does. Both trees are measured
in the same minutes, alternately, so machine noise falls on both. Prints one line per boot (with the
CPU-seconds each power-on program had used when boot exited) and the median/min/max per tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEED = """
import sys
from pathlib import Path
from typing import Any
from appliance.cli.localnode import LocalNode
node = LocalNode.create(Path(sys.argv[1]), model=sys.argv[2], persist_interval=3600, ready_timeout=3600,
                        model_init="meta")
node.seed()
"""


def make_node(tree: Path, model: str) -> tuple[Path, dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    node = Path(tempfile.mkdtemp(prefix="ap-ab-", dir="/tmp")) / "node"
    subprocess.run([sys.executable, "-c", SEED, str(node), model], check=True, env=env, cwd=tree)
    return node, env


def session(sid: int) -> dict[int, tuple[str, float]]:
    """Processes of session ``sid``: pid -> (program, CPU-seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[3]) == sid:
            words = [a.decode(errors="replace") for a in argv]
            name = "supervisord" if "supervisor.supervisord" in words else next(
                (w for w in words if w in ("serve", "persist", "guard", "console")), words[-1]
            )  # fmt: skip
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (supervisord gives each program its own process group)."""
    for pid in session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def power_on(tree: Path, node: Path, env: dict[str, str], drop_caches: bool) -> dict[str, Any]:
    if drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    py = sys.executable
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    sup = subprocess.Popen(
        [py, "-m", "supervisor.supervisord", "-c", str(node / "supervisord.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tree, start_new_session=True,
    )  # fmt: skip
    done = subprocess.run(
        [py, "-m", "appliance.cli.main", "boot", "--config", str(node / "node.json"), "--json"],
        capture_output=True, text=True, env=env, cwd=tree, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: round(seconds, 2) for name, seconds in session(sup.pid).values()}
    cpu["boot"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    kill_session(sup.pid)  # the power cut: supervisord and every program it started (their own groups)
    sup.wait()
    time.sleep(1.0)
    for f in (node / "run").iterdir():
        if f.is_file() or f.is_socket():
            f.unlink()
    if done.returncode != 0:
        raise SystemExit(f"{tree}: boot failed ({done.returncode}): {done.stdout}{done.stderr}")
    out = json.loads(done.stdout)
    return {"power_on_s": round(wall, 3), "boot_total_s": out["stages"]["total_s"], "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", type=Path, nargs=2, metavar="TREE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="appliance.models.demo:build_large")
    parser.add_argument("--warm", action="store_true", help="keep the page cache (default: drop it, needs root)")
    args = parser.parse_args()
    nodes = [make_node(tree, args.model) for tree in args.trees]
    walls: dict[Path, list[float]] = {tree: [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree, (node, env) in zip(args.trees, nodes, strict=True):
            result = power_on(tree, node, env, not args.warm)
            walls[tree].append(result["power_on_s"])
            print(tree, result, flush=True)
    for tree, values in walls.items():
        print(f"{tree}: power-on median {statistics.median(values):.2f} s (min {min(values):.2f}, "
              f"max {max(values):.2f}, {len(values)} boots)")  # fmt: skip


if __name__ == "__main__":
    main()
