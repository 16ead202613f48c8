"""What the console pages show, read from the same sources as the CLI's read commands.

Owns: ``overview`` (what is served, its signer, node phase, last boot's stage timings,
recovery reason, observed restores), ``slots`` (both slots with every generation, its
verification and signer, BAD/GOOD/UNKNOWN marks and why, scrub progress, free space),
``events`` (the event log filtered by component and severity, newest first) and
``generation_facts`` (the rollback rule's input). Every function takes the node configuration
and returns plain JSON-able dicts; ``boot-status``, ``status``, ``log`` and ``events`` print the
same data (``appliance.cli``). Does not own rendering (templates) or changing anything.
"""

from __future__ import annotations

from typing import Any

from appliance.cli.node_commands import boot_status
from appliance.cli.perf_commands import observed_restores
from appliance.errors import ApplianceError, StorageError
from appliance.events import event_fields, read_events
from appliance.format.console import GenerationFacts
from appliance.node.config import NodeConfig
from appliance.node.identity import open_node_store
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.scrub import load_cursor
from appliance.store.store import Store

SEVERITIES = {"critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6}
MAX_EVENTS_SHOWN = 500


def _store(config: NodeConfig) -> Store:
    return open_node_store(config)


def generation_rows(store: Store) -> list[dict[str, Any]]:
    """Every committed generation of both slots, newest first, each opened (signature, model, frames)."""
    rows = []
    for outcome in scan(store.storage, store.limits).records:
        row: dict[str, Any] = {"slot": outcome.slot, "generation": outcome.generation, "ok": False}
        if outcome.record is None:
            row["problem"] = outcome.error.problem if outcome.error else "unreadable commit record"
            rows.append(row)
            continue
        row["manifest_digest"] = outcome.record.manifest_digest.hex
        row["committed"] = outcome.record.committed
        try:
            opened = open_checkpoint(store.storage, outcome.record, store.trust, store.config.model, store.limits)
        except (ApplianceError, StorageError) as exc:
            row["problem"] = f"{type(exc).__name__}: {getattr(exc, 'problem', exc)}"
        else:
            m = opened.verified.manifest
            comments = {k.keyid: k.comment for k in store.trust.keys}
            row.update(ok=True, signers=list(opened.verified.keyids), created=m.created, raw_bytes=m.raw_bytes,
                       stored_bytes=m.stored_bytes, metadata=dict(m.metadata),
                       signer_notes=[comments.get(k, "") for k in opened.verified.keyids],
                       parent=m.parent.hex if m.parent else None,
                       provenance=m.provenance.describe() if m.provenance is not None else None)  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda r: (-r["generation"], r["slot"]))
    return rows


def generation_facts(rows: list[dict[str, Any]]) -> list[GenerationFacts]:
    return [GenerationFacts(r["slot"], r["generation"], r["ok"], r.get("problem", "")) for r in rows]


def _last(config: NodeConfig, name: str) -> dict[str, Any] | None:
    found = read_events(config.event_log, frozenset({name}))
    return found[-1] if found else None


def overview(config: NodeConfig) -> dict[str, Any]:
    status = boot_status(config)
    store = _store(config)
    rows = generation_rows(store)
    handoff = status["handoff"]
    served = None
    if handoff:
        served = next(
            (r for r in rows if r["slot"] == handoff["slot"] and r["generation"] == handoff["generation"]), None
        )
    last_boot = _last(config, "boot.serving")
    return {
        "model": store.config.model,
        "phase": (status["service"] or {}).get("phase") or "not running",
        "recovery": status["recovery"],
        "floor": status["floor"],
        "handoff": handoff,
        "served": served,
        "last_boot": None if last_boot is None else {"ts": last_boot.get("ts"), **event_fields(last_boot)},
        "observed_restores": observed_restores(config.path("event_log")),
        "newest": rows[0]["generation"] if rows else None,
        "trusted_keys": [k.keyid for k in store.trust.keys],
    }


def slots(config: NodeConfig) -> dict[str, Any]:
    store = _store(config)
    status = store.status()
    marks = boot_status(config)["slots"]
    rows = generation_rows(store)
    cursor, damaged = load_cursor(store.storage, store.limits)
    out = {}
    for name, s in status["slots"].items():
        out[name] = s | {"mark": marks.get(name), "generations": [r for r in rows if r["slot"] == name]}
    return {
        "slots": out,
        "floor": boot_status(config)["floor"],
        "next_commit": status["next_commit"],
        "scrub": cursor.to_dict() | {"damaged": damaged},
        "rows": rows,
    }


def events(config: NodeConfig, component: str = "", severity: str = "", limit: int = 200) -> dict[str, Any]:
    """Newest first; ``severity`` keeps events at that level or more severe (syslog priority order)."""
    records = read_events(config.event_log)
    components = sorted({str(e.get("component", "")) for e in records})
    threshold = SEVERITIES.get(severity)
    chosen = [
        e
        for e in records
        if (not component or e.get("component") == component)
        and (threshold is None or int(e.get("priority", 6)) <= threshold)
    ]
    chosen.reverse()
    return {
        "events": chosen[: max(1, min(limit, MAX_EVENTS_SHOWN))],
        "total": len(chosen),
        "components": components,
        "severities": list(SEVERITIES),
        "component": component,
        "severity": severity if threshold is not None else "",
    }
