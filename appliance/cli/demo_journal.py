"""The demo's third part: zero-loss adaptation — the step counter continues exactly after a power cut.

Owns: the narrated script. Does not own behaviour: a real node (``appliance node-init --journal``)
under real supervisord, real adaptation requests on the control channel, a real power cut (kill -9
of the whole process tree, no persist since the boot), a real boot that replays the journal.

Steps: node-init --journal -> seed -> supervisord -> boot -> adapt N steps (each answered only
once journaled) -> cut the power -> supervisord -> boot (restore generation 1, replay N steps,
canary, admit) -> adapt once more: its step number is N + 1.
"""

from __future__ import annotations

from pathlib import Path

from appliance.cli.demo_supervised import TARGET, X, say
from appliance.cli.localnode import LocalNode
from appliance.events import event_fields

STEPS = 5


def run_journal_demo(work: Path) -> bool:
    node = LocalNode.create(work / "node-journal", persist_interval=3600, journal=True)
    cfg = f"--config {node.config_path}"
    try:
        say("a node whose service journals every adaptation step", f"appliance node-init {node.root} --journal")
        node.seed()
        node.start()
        say("boot", f"appliance boot {cfg}")
        _booted(node)
        say(f"adapt {STEPS} steps; each is answered only after its journal record is fsynced (group commit)")
        last = 0
        for _ in range(STEPS):
            status, body = node.control_call("/v1/adapt", {"inputs": X, "targets": TARGET})
            last = int(body["step"]) if status == 200 else -1
            print(f"  step {last} acknowledged (loss {body.get('loss', float('nan')):.6f})")
        say("cut the power: kill -9 of supervisord and every child; nothing was persisted since the boot")
        print(f"killed {len(node.power_cut())} processes; /run wiped as a power loss would")
        node.start()
        say("power on again: boot restores generation 1, the service replays the journal, then canary and admission",
            f"appliance boot {cfg}")  # fmt: skip
        _booted(node)
        replayed = event_fields(node.events("journal.replayed")[-1])
        print(f"  replayed {replayed['records']} journaled steps in {replayed['seconds']:.3f} s")
        status, body = node.control_call("/v1/adapt", {"inputs": X, "targets": TARGET})
        after = int(body["step"]) if status == 200 else -1
        print(f"the next step is step {after}: the counter continues exactly after the cut ({last} + 1)")
        return after == last + 1 == STEPS + 1
    finally:
        node.stop()


def _booted(node: LocalNode) -> None:
    code, outcome = node.boot()
    if code != 0:
        raise SystemExit(f"demo: boot failed with exit code {code}: {outcome}")
    s = outcome["stages"]
    print(f"serving generation {outcome['serving']['generation']} after {s['total_s']:.2f} s "
          f"(verified restore {s.get('restore_s', 0):.3f} s, journal replay {s.get('replay_s', 0):.3f} s, "
          f"canary {s['canary_s']:.3f} s)")  # fmt: skip
