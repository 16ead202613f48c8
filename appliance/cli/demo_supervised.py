"""The demo's second half: the supervised lifecycle with real supervisord and the real model service.

Owns: the narrated script. Does not own behaviour: every step is a real ``appliance`` command in
a child process (``LocalNode``), a real HTTP request to the service, or a real power cut.

Steps: node-init -> seed (generation 1) -> supervisord -> boot (restore verified, canary, GOOD)
-> serve a request -> adapt + persist three deltas -> cut power (kill -9 of the whole process
tree) while a persist is in flight -> supervisord again -> boot -> which generation came back,
and how long each stage took.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from appliance.cli.localnode import LocalNode
from appliance.cli.output import human_bytes
from appliance.events import event_fields
from appliance.store.store import Store

X = [[0.1 * i for i in range(16)]]
TARGET = [[1.0, -1.0, 0.5, 0.0]]


def say(title: str, command: str = "") -> None:
    print(f"\n== {title}" + (f"\n$ {command}" if command else ""), flush=True)


def run_supervised_demo(work: Path) -> bool:
    node = LocalNode.create(work / "node", persist_interval=3600)
    cfg = f"--config {node.config_path}"
    try:
        say("a node: signing key, two-slot store, node.json, supervisord.conf", f"appliance node-init {node.root}")
        say("its first checkpoint: the built-in model's fresh state, with its canary", f"appliance seed {cfg}")
        print(_committed(node.seed()))
        say(
            "power on: systemd would start supervisord, then `appliance boot`",
            f"supervisord -c {node.root}/supervisord.conf",
        )
        node.start()
        first = _boot(node, cfg)
        status, body = node.call("/v1/infer", {"inputs": X})
        say(
            "serve a request", f"curl -X POST {node.config.service_url}/v1/infer -d '{{\"inputs\": [[...16 numbers]]}}'"
        )
        print(f"HTTP {status}: {body['outputs'][0]} (slot {body['slot']}, generation {body['generation']})")
        say("adapt online and persist three deltas (the service exports, the persistence watchdog commits)")
        for _ in range(3):
            _adapt_and_persist(node)
        say("cut the power while a persist is in flight (kill -9 of supervisord and every child)")
        acknowledged = _cut_during_persist(node)
        say("power on again", f"supervisord -c {node.root}/supervisord.conf && appliance boot {cfg}")
        node.start()
        second = _boot(node, cfg)
        newest = max(e["generation"] for e in Store.open(node.config.store).log() if "error" not in e)
        back = second["serving"]["generation"]
        print(
            f"came back with generation {back}: the newest committed one ({newest}); last acknowledged {acknowledged}"
        )
        say("what happened, as structured events", f"appliance events {cfg}")
        print(node.cli("events", "--tail", "12").stdout.rstrip())
        return bool(first["serving"]) and back == newest and back >= acknowledged
    finally:
        node.stop()


def _committed(c: dict[str, Any]) -> str:
    return f"committed generation {c['generation']} into slot {c['slot']} ({human_bytes(c['written_bytes'])} written)"


def _boot(node: LocalNode, cfg: str) -> dict[str, Any]:
    say("boot: newest committed checkpoint -> signature -> floor -> restore -> canary -> GOOD", f"appliance boot {cfg}")
    code, outcome = node.boot()
    if code != 0:
        raise SystemExit(f"demo: boot failed with exit code {code}: {outcome}")
    s, r = outcome["stages"], outcome["restore"]
    print(f"serving slot {outcome['serving']['slot']} generation {outcome['serving']['generation']}")
    lines = [
        f"  boot to serving {s['total_s']:.2f} s: discover {s['discover_s']:.3f}, "
        f"service start {s['service_start_s']:.2f}",
        f"    (interpreter+imports {s.get('process_start_s', 0):.2f}, model build {s.get('model_build_s', 0):.3f}, "
        f"verified restore {s.get('restore_s', 0):.3f}), canary {s['canary_s']:.3f}, "
        f"mark GOOD + admit {s['mark_s']:.3f}",
        f"  restore: {human_bytes(r['raw_bytes'])} in {r['frames']} frames, each SHA-256-checked, {r['seconds']:.3f} s",
    ]
    print("\n".join(lines))
    return outcome


def _adapt_and_persist(node: LocalNode) -> dict[str, Any]:
    node.control_call("/v1/adapt", {"inputs": X, "targets": TARGET})
    before = len(node.events("persist.committed"))
    _, exported = node.control_call("/v1/export", {})
    committed = event_fields(node.wait_event("persist.committed", after=before, timeout=120))
    print(
        f"step {exported['step']}: serving paused {exported['pause_s'] * 1000:.1f} ms to capture; "
        f"{_committed(committed)} in {committed['seconds']:.3f} s"
    )
    return committed


def _newest_acknowledged(node: LocalNode) -> int:
    return max((int(event_fields(e)["generation"]) for e in node.events("persist.committed")), default=0)


def _cut_during_persist(node: LocalNode) -> int:
    acknowledged = _newest_acknowledged(node)
    node.control_call("/v1/adapt", {"inputs": X, "targets": TARGET})
    started = len(node.events("persist.started"))
    threading.Thread(target=_export_quietly, args=(node,), daemon=True).start()
    node.wait_event("persist.started", after=started, timeout=120)
    killed = node.power_cut()
    finished = _newest_acknowledged(node) > acknowledged
    state = "the commit completed just before the cut" if finished else "mid-commit"
    print(f"killed {len(killed)} processes ({state}); /run wiped as a power loss would")
    return acknowledged


def _export_quietly(node: LocalNode) -> None:
    try:
        node.control_call("/v1/export", {}, timeout=120)
    except Exception:  # the power cut kills the service mid-request
        return
