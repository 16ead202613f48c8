"""The printed table (absolute figures and ratios against the peers of the same run) and the goals."""

from __future__ import annotations

import statistics
from typing import Any

ISSUE_FAST_CEILING = 3.05e9  # perf-anchors.md section 3, pipeline A on this machine kind


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def _rate(n: float | None) -> str:
    return "-" if n is None else f"{n:.2f}"


def _same(identical: bool | None) -> str:
    return "-" if identical is None else ("yes" if identical else "NO")


def rows_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    header = (
        f"{'data set':18s} {'system':45s} {'persist':>8s} {'restore':>8s} {'x careful':>9s} "
        f"{'stored':>10s} {'ratio':>6s} {'peak RSS':>9s}  identical  verification"
    )
    lines += [header, "-" * len(header)]
    careful = {r["dataset"]: r["restore_gbps"] for r in rows if r["system"].startswith("careful")}
    for r in rows:
        base = careful.get(r["dataset"])
        ratio = r["raw_bytes"] / r["stored_bytes"] if r["stored_bytes"] else 0
        lines.append(
            f"{r['dataset']:18s} {r['system']:45s} {_rate(r['persist_gbps']):>8s} {_rate(r['restore_gbps']):>8s} "
            f"{(r['restore_gbps'] / base if base else 0):>8.2f}x {_gb(r['stored_bytes']):>10s} {ratio:>6.3f} "
            f"{_gb(r['peak_rss']):>9s}  {_same(r['identical']):9s}  {r['verified']}"
        )
    lines.append(
        "persist/restore in GB/s of raw state (10^9 B/s); "
        "restore = a fresh process until the state is usable (median of the runs)"
    )
    return "\n".join(lines)


def series_table(series: dict[str, Any]) -> str:
    steps = series["steps"]
    if not steps:
        return ""
    raw = series["raw_bytes"]
    names = [k for k in steps[0] if k != "step"]
    lines = [f"fine-tuning series: {len(steps)} checkpoints of {raw / 1e9:.2f} GB, 1% of elements moved per step"]
    lines.append(f"{'step':>4s} " + " ".join(f"{n + ' written':>20s} {n + ' s':>8s}" for n in names))
    for e in steps:
        lines.append(
            f"{e['step']:>4d} "
            + " ".join(f"{e[n]['written_bytes'] / 1e6:>17.1f} MB {e[n]['seconds']:>8.2f}" for n in names)
        )
    return "\n".join(lines)


def _row(rows: list[dict[str, Any]], dataset: str, system: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["dataset"] == dataset and r["system"] == system), None)


def goals(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    rows, c, series = result["rows"], result["ceilings"], result["series"]
    ds = "llama-7b-shaped"
    careful = _row(rows, ds, "careful user: sha256sum + safetensors load")
    zc = _row(rows, ds, "appliance fast (zero-copy)")
    compact = _row(rows, ds, "appliance compact")
    fast = _row(rows, ds, "appliance fast")
    out: list[tuple[str, bool | None, str]] = []
    if careful and zc:
        x = zc["restore_gbps"] / careful["restore_gbps"]
        out.append(
            (
                "fast verified restore >= 2.3x careful user",
                x >= 2.3,
                f"{x:.2f}x ({zc['restore_gbps']:.2f} vs {careful['restore_gbps']:.2f} GB/s)",
            )
        )
        ceil = c.get("fast_restore_bps", ISSUE_FAST_CEILING) / 1e9
        out.append(
            (
                "fast restore >= 0.85 of its ceiling",
                zc["restore_gbps"] >= 0.85 * ceil,
                f"{zc['restore_gbps'] / ceil:.2f} of {ceil:.2f} GB/s (this run's probe; issue: 3.05)",
            )
        )
    if careful and compact:
        ceil = c.get("compact_restore_bps", 0) / 1e9
        frac = compact["restore_gbps"] / ceil if ceil else 0
        out.append(("compact restore >= 0.85 of its ceiling", frac >= 0.85, f"{frac:.2f} of {ceil:.2f} GB/s"))
        out.append(
            (
                "compact restore faster than careful user",
                compact["restore_gbps"] > careful["restore_gbps"],
                f"{compact['restore_gbps']:.2f} vs {careful['restore_gbps']:.2f} GB/s",
            )
        )
        share = compact["stored_bytes"] / compact["raw_bytes"]
        out.append(("compact stores <= 0.67x the bytes", share <= 0.67, f"{share:.4f}x (ratio {1 / share:.3f})"))
    for tool in ("restic", "borg"):
        peer = _row(rows, ds, f"{tool} backup / restore")
        if peer is None:
            out.append((f">= 3x {tool}'s restore speed", None, f"{tool} skipped: {result['skipped'].get(tool, '?')}"))
            continue
        for mine in (zc, compact):
            if mine:
                x = mine["restore_gbps"] / peer["restore_gbps"]
                out.append((f">= 3x {tool}'s restore speed ({mine['system']})", x >= 3, f"{x:.1f}x"))
    for r in rows:
        if r["system"].startswith("appliance") and r["peak_rss"]:
            limit = r["raw_bytes"] * 1.1 + 256e6
            out.append(
                (
                    f"peak RSS <= state+10%+256MB ({r['dataset']}, {r['system']})",
                    r["peak_rss"] <= limit,
                    f"{r['peak_rss'] / 1e9:.2f} GB vs limit {limit / 1e9:.2f} GB",
                )
            )
    write = c["fsync_write_bps"]
    for r in (fast, compact):
        if r:
            ratio = r["raw_bytes"] / r["stored_bytes"]
            target = 0.9 * min(write * ratio, c.get("compress_2t_bps", float("inf")) if r is compact else float("inf"))
            out.append(
                (
                    f"full commit >= 0.9 x min(fsync write x ratio, compress) ({r['system']})",
                    r["persist_gbps"] * 1e9 >= target,
                    f"{r['persist_gbps']:.2f} vs target {target / 1e9:.2f} GB/s",
                )
            )
    out += issue16_goals(result)
    steps = series["steps"]
    if len(steps) > 2:
        raw = series["raw_bytes"]
        later = steps[2:]  # step 1 also copies the base frames into the other slot once
        new = [e["appliance"]["written_bytes"] - e["appliance"].get("copied_bytes", 0) for e in later]
        share = statistics.median(new) / raw
        copies = statistics.median(e["appliance"].get("copied_bytes", 0) for e in later) / raw
        full = steps[0]["appliance"]["seconds"]
        frac = statistics.median(e["appliance"]["seconds"] for e in later) / full
        detail = f"{share * 100:.2f}% new + {copies * 100:.2f}% A/B copy of the parent's deltas (median of steps 2+)"
        out.append(("delta commit stores <= 1.5% of raw", share <= 0.015, detail))
        out.append(
            ("delta commit time <= 10% of a full commit", frac <= 0.10, f"{frac * 100:.0f}% (median of steps 2+)")
        )
    return out


def issue16_goals(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Issue 16's goals 2, 4 and 5 (goals 1 and 3 need a node: ``bench/boot_persist.py``, ``--node``)."""
    rows, c = result["rows"], result["ceilings"]
    ds = "llama-7b-shaped"
    out: list[tuple[str, bool | None, str]] = []
    watchdog = result.get("watchdog_persist")
    if watchdog:
        g = watchdog["goal"]
        floor = watchdog["floor"]
        detail = (
            f"{g['detail']}; floor: SHA-256 of the changed frames {floor['sha256_of_changed_frames_s']:.2f} s "
            f"({floor['changed_frames_share'] * 100:.0f}% of frames changed) + content check "
            f"{floor['content_check_s']:.2f} s; CPU {watchdog['cpu_delta_over_full'] * 100:.0f}%"
        )
        out.append(("issue 16 (2): " + g["goal"], g["met"], detail))
    compact, careful = _row(rows, ds, "appliance compact"), _row(rows, ds, "careful user: sha256sum + safetensors load")
    zipnn = _row(rows, ds, "zipnn 0.5 (in memory, 2 threads)")
    if compact and careful:
        ratio = compact["raw_bytes"] / compact["stored_bytes"]
        vs_zipnn = compact["restore_gbps"] / zipnn["restore_gbps"] if zipnn else None
        met = compact["restore_gbps"] >= careful["restore_gbps"] and ratio >= 1.49 and (vs_zipnn or 0) >= 0.85
        stages = (compact.get("restore_stats") or {}).get("stage_seconds") or {}
        staged = ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if v)
        out.append(
            (
                "issue 16 (4): CPU compact restore >= careful user, >= 0.85 of ZipNN, ratio >= 1.49",
                met if zipnn else None,
                f"{compact['restore_gbps']:.2f} vs careful {careful['restore_gbps']:.2f} GB/s, "
                + (f"{vs_zipnn:.2f} of ZipNN's {zipnn['restore_gbps']:.2f} GB/s, " if zipnn else "ZipNN skipped, ")
                + f"ratio {ratio:.3f}; stage CPU-s: {staged or '-'}",
            )
        )
    for policy, system in (("compact", "appliance compact"), ("fast", "appliance fast (zero-copy)")):
        predicted, row = c.get(f"{policy}_predicted_s"), _row(rows, ds, system)
        if predicted and row:
            measured = row["restore_seconds"]
            out.append(
                (
                    f"issue 16 (5): `appliance report` bound holds ({system}: measured <= predicted worst)",
                    measured <= predicted["worst"],
                    f"measured {measured:.2f} s, predicted expected {predicted['expected']:.2f} s / "
                    f"worst {predicted['worst']:.2f} s ({predicted['bound']}-bound)",
                )
            )
    return out


def goals_table(items: list[tuple[str, bool | None, str]]) -> str:
    lines = ["goals:"]
    for name, ok, detail in items:
        mark = "SKIP" if ok is None else ("met " if ok else "MISS")
        lines.append(f"  [{mark}] {name}: {detail}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown (for docs/performance.md): ``python -m bench.table RESULT.json``."""
    rows = result["rows"]
    careful = {r["dataset"]: r["restore_gbps"] for r in rows if r["system"].startswith("careful")}
    out = [
        "| data set | system | persist GB/s | restore GB/s | x careful | stored | ratio | peak RSS | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = careful.get(r["dataset"]) or 0
        out.append(
            f"| {r['dataset']} | {r['system'].strip()} | {_rate(r['persist_gbps'])} | {_rate(r['restore_gbps'])} | "
            f"{r['restore_gbps'] / base if base else 0:.2f}x | {_gb(r['stored_bytes'])} | "
            f"{r['raw_bytes'] / r['stored_bytes']:.3f} | {_gb(r['peak_rss'])} | {_same(r['identical'])} |"
        )
    series = result["series"]
    if series["steps"]:
        names = [k for k in series["steps"][0] if k != "step"]
        out += ["", f"Fine-tuning series ({series['raw_bytes'] / 1e9:.2f} GB, 1% of elements per step): "
                "bytes written per checkpoint and seconds", "",
                "| step | " + " | ".join(f"{n} MB | {n} s" for n in names) + " |",
                "|---|" + "---|---|" * len(names)]  # fmt: skip
        for e in series["steps"]:
            cells = " | ".join(f"{e[n]['written_bytes'] / 1e6:.1f} | {e[n]['seconds']:.2f}" for n in names)
            out.append(f"| {e['step']} | {cells} |")
    out += ["", "| goal | result | detail |", "|---|---|---|"]
    for g in result["goals"]:
        mark = "skipped" if g["met"] is None else ("met" if g["met"] else "**missed**")
        out.append(f"| {g['goal']} | {mark} | {g['detail']} |")
    load = result["load"]
    out += ["", f"Load during the run: other processes used {load['foreign_cores_average']} of the 2 cores on "
            f"average (loadavg {' '.join(load['loadavg_start'])} -> {' '.join(load['loadavg_end'])}); "
            f"page cache {result['machine'].get('page_cache', 'warm')}."]  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
