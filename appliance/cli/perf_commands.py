"""``appliance report``: this device's verifiable restore time for the committed checkpoint.

Owns: the report command — a short probe of this device's read, hash and decode rates, the
expected and worst-case restore time of the newest valid checkpoint (and of the fallback the
boot would take if it failed), next to the restore times observed at boot (``restore.finished``
events in the event log). Does not own the probe (``appliance.store.probe``) or the arithmetic
(``appliance.format.restore_time``).

Event log: the node's (``--events``, else node.json's ``event_log`` with ``--config``, else
``$APPLIANCE_EVENT_LOG``, else the production path). A ``restore.finished`` record (the model
service writes it, ``appliance.events``) carries ``ts`` in its envelope and ``slot``,
``generation``, ``raw_bytes`` and ``seconds`` under ``fields``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.main import add_json, add_root
from appliance.cli.output import Output, human_bytes
from appliance.errors import NoValidCheckpointError
from appliance.events import event_fields, iter_events
from appliance.format.manifest import Manifest
from appliance.format.restore_time import estimate
from appliance.store.probe import probe, shape_of
from appliance.store.store import Store

if TYPE_CHECKING:
    from appliance.node.config import NodeConfig

DEFAULT_EVENT_LOG = "/var/log/appliance/events.jsonl"
RESTORE_EVENT = "restore.finished"
MAX_OBSERVED = 10


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="measure this device and state the verified restore time of the checkpoint")
    add_root(p)
    p.add_argument(
        "--events",
        type=Path,
        help="event log with boot restore times (default: node.json's event_log with --config, else "
        f"$APPLIANCE_EVENT_LOG or {DEFAULT_EVENT_LOG})",
    )
    p.add_argument("--save-profile", action="store_true", help="save the measured rates for the auto policy")
    p.add_argument(
        "--config",
        type=Path,
        metavar="NODE.json",
        help="this node: read its event log, and show the persist interval (persist_interval 'auto': chosen "
        "from its measured costs)",
    )
    add_json(p)
    p.set_defaults(func=cmd_report)


def observed_restores(path: Path) -> list[dict[str, Any]]:
    """The newest ``restore.finished`` events (a torn or foreign line is skipped), newest first.

    The event's data is under ``fields`` (``appliance.events.event_fields``); ``ts`` is the envelope's.
    An unreadable log (another user's, a directory) shows as no observation, never as a failure.
    """
    try:
        found = [
            {"ts": e.get("ts")} | {k: fields.get(k) for k in ("slot", "generation", "raw_bytes", "seconds")}
            for e in iter_events(path, frozenset({RESTORE_EVENT}))
            if "seconds" in (fields := event_fields(e))
        ]
    except OSError:
        return []
    return list(reversed(found[-MAX_OBSERVED:]))


def _estimates(manifest: Manifest, result: Any) -> dict[str, Any]:
    private = estimate(shape_of(manifest, zero_copy=False), result.rates)
    out = {"private": private.to_dict()}
    mapped = shape_of(manifest, zero_copy=True)
    if mapped.mapped_raw:
        out["zero_copy"] = estimate(mapped, result.rates).to_dict()
    return out


def build_report(store: Store, events: Path) -> dict[str, Any]:
    selection = store.select()
    opened = selection.opened
    manifest = opened.verified.manifest
    result = probe(store.storage, opened.slot, manifest)
    report: dict[str, Any] = {
        "checkpoint": {
            "slot": opened.slot,
            "generation": opened.generation,
            "policy": manifest.policy,
            "raw_bytes": manifest.raw_bytes,
            "stored_bytes": manifest.stored_bytes,
            "codecs": sorted({f.codec.name for f in manifest.frame_index().values()}),
        },
        "device": result.rates.to_dict() | {"cold_read_measured": result.cold_measured},
        "probe_seconds": round(result.seconds, 3),
        "estimate": _estimates(manifest, result),
        "events": str(events),
        "observed": observed_restores(events),
    }
    worst = max(e["worst_seconds"] for e in report["estimate"].values())
    try:
        fallback = store.select(exclude=frozenset({(opened.slot, opened.generation)})).opened
    except NoValidCheckpointError:
        fallback = None
    if fallback is not None:
        fb = estimate(shape_of(fallback.verified.manifest, zero_copy=False), result.rates)
        report["fallback"] = {"slot": fallback.slot, "generation": fallback.generation} | fb.to_dict()
        worst += fb.worst
    report["worst_case_seconds"] = round(worst, 3)
    return report


def cmd_report(args: argparse.Namespace, out: Output) -> int:
    from appliance.node.config import load_config

    store = Store.open(args.root)
    config = load_config(args.config) if args.config is not None else None
    report = build_report(store, event_log(args.events, config))
    if config is not None:
        report["persist_interval"] = interval_report(config)
    if args.save_profile:
        from appliance.format.restore_time import DeviceRates

        store.save_device_profile(DeviceRates.from_dict(report["device"]))
        report["profile_saved"] = True
    out.result(report, _text)
    return 0


def event_log(events: Path | None, config: NodeConfig | None) -> Path:
    """Where the boots were observed: ``--events``, else the node's own log, else the environment's."""
    if events is not None:
        return events
    if config is not None:
        return config.path("event_log")
    return Path(os.environ.get("APPLIANCE_EVENT_LOG", DEFAULT_EVENT_LOG))


def interval_report(config: NodeConfig) -> dict[str, Any]:
    """The persist interval this node uses, why, and what a failure then costs (issue 17)."""
    from appliance.persist.interval import chosen

    choice, inputs, sources = chosen(config)
    interval = choice.interval_s if config.persist_auto else config.persist_interval
    steps_lost = 0.0 if config.journal_dir else interval / 2.0 * inputs.steps_per_s
    return {
        "mode": "auto" if config.persist_auto else "fixed",
        "interval_s": round(interval, 3),
        "journal": bool(config.journal_dir),
        "expected_acknowledged_steps_lost": round(steps_lost, 3),
        "choice": choice.to_dict(),
        "inputs": dict(inputs.__dict__),
        "sources": sources,
    }


def _interval_text(p: dict[str, Any]) -> list[str]:
    c = p["choice"]
    head = f"persist interval: {p['mode']} {p['interval_s']:.1f} s"
    if p["mode"] == "auto":
        head += f" (bound: {c['bound']}; Young/Daly sqrt(2CM) = {c['young_daly_s']:.1f} s)"
    lines = [head]
    if p["journal"]:
        lines.append(
            f"  per failure: no acknowledged step lost (journal); replay at boot expected "
            f"{c['expected_replay_s']:.2f} s, worst {c['worst_replay_s']:.2f} s; "
            f"expected work redone {c['expected_work_lost_s']:.1f} s"
        )
    else:
        lines.append(
            f"  per failure (no journal): {p['expected_acknowledged_steps_lost']} acknowledged steps lost on average"
        )
    if c["over_budget"]:
        lines.append("  the flash budget needs a longer interval than the replay/journal limits allow")
    measured = sorted(k for k, v in p["sources"].items() if v == "measured")
    lines.append(f"  measured: {', '.join(measured) or 'nothing yet (priors)'}")
    return lines


def _gbps(rate: float) -> str:
    return f"{rate / 1e9:.2f} GB/s"


def _text(d: dict[str, Any]) -> str:
    c, dev = d["checkpoint"], d["device"]
    ratio = c["raw_bytes"] / c["stored_bytes"] if c["stored_bytes"] else 0.0
    lines = [
        f"checkpoint {c['slot']}/{c['generation']} ({c['policy']}): {human_bytes(c['raw_bytes'])} raw, "
        f"{human_bytes(c['stored_bytes'])} stored (ratio {ratio:.2f}), codecs {', '.join(c['codecs'])}",
        f"device ({dev['cores']} cores, probe {d['probe_seconds']:.1f} s): storage read "
        f"{_gbps(dev['read_cold'])}{'' if dev['cold_read_measured'] else ' (page cache: could not evict)'}, "
        f"SHA-256 {_gbps(dev['hash'])}/core, copy {_gbps(dev['read_copy'])}/core, "
        f"fresh memory {_gbps(dev['touch'])}/core, GPU decoder {'yes' if dev['gpu_decoder'] else 'no'}",
    ]
    lines += [f"  decode {codec}: {_gbps(rate)}/core" for codec, rate in dev["decode"].items()]
    for mode, e in d["estimate"].items():
        lines.append(
            f"verified restore ({mode.replace('_', '-')}): expected {e['expected_seconds']:.2f} s "
            f"({e['bound']}-bound), no-overlap worst {e['worst_seconds']:.2f} s"
        )
    if "fallback" in d:
        fb = d["fallback"]
        lines.append(
            f"if it fails at its last frame, fallback {fb['slot']}/{fb['generation']} adds {fb['worst_seconds']:.2f} s"
        )
    lines.append(f"verifiable maximum restore time: {d['worst_case_seconds']:.2f} s")
    if d["observed"]:
        lines.append(f"observed at boot ({d['events']}):")
        lines += [f"  {o['ts']}  {o['slot']}/{o['generation']}  {o['seconds']} s" for o in d["observed"]]
    else:
        lines.append(f"no boot observed yet (no restore.finished events in {d['events']})")
    if "persist_interval" in d:
        lines += _interval_text(d["persist_interval"])
    if d.get("profile_saved"):
        lines.append("device profile saved: the auto policy now uses these rates")
    return "\n".join(lines)
