"""The technician actions themselves, as run by ``appliance tech ACTION`` (the console runs that verb).

Owns: one function per action (verify, scrub, slot-reset, rollback, restart-service,
diagnostics): plan it with the pure rules (``appliance.format.console``), refuse with
``ActionRefusedError`` (exit 83) when a precondition fails, do it, and write one
``console.action`` event naming the technician, the action, its parameters and outcome.
Does not own the web pages or how the console reaches this code (``actions``).

This module runs in the ``appliance tech`` process, never inside the web console: the rollback
re-commit needs the device signing key and torch (``Committer`` loads the key; on a
production node this verb is invoked on the persistence side, see ``actions``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.console import readmodel
from appliance.errors import ActionRefusedError, ApplianceError, LockedError, SupervisorUnavailableError
from appliance.events import EventLog
from appliance.format import console as rules
from appliance.format import slotstate as ss
from appliance.node.config import NodeConfig
from appliance.node.floor import FloorUnreadableError, open_floor
from appliance.node.identity import open_node_store
from appliance.store.bootstate import SlotStates
from appliance.store.scrub import scrub_store
from appliance.store.store import Store

DEFAULT_SCRUB_SECONDS = 60.0


def _log(config: NodeConfig, technician: str, action: str, outcome: str, **fields: Any) -> None:
    EventLog(config.event_log, "console").emit(
        "console.action", technician=technician, action=action, outcome=outcome, **fields
    )


def _store(config: NodeConfig) -> Store:
    return open_node_store(config)


def _floor(config: NodeConfig) -> int:
    """The floor, read directly or asked of the boot side (it alone may read the file on a node)."""
    from appliance.console.actiond import read_floor

    try:
        return open_floor(config).read()
    except (FloorUnreadableError, OSError) as exc:
        floor = read_floor(config)
        if floor is None:
            raise ActionRefusedError(
                f"the anti-rollback floor is unreadable ({exc}); boot must rebuild it first"
            ) from exc
        return floor


def verify(config: NodeConfig, technician: str) -> dict[str, Any]:
    verified = _store(config).verify(deep=True)
    bad = [c for c in verified.checkpoints if not c.ok]
    outcome = "every checkpoint verifies" if verified.all_ok else f"{len(bad)} checkpoint(s) fail verification"
    _log(config, technician, "verify", outcome, deep=True, ok=verified.all_ok, failed=len(bad))
    return verified.to_dict() | {"summary": outcome}


def scrub(config: NodeConfig, technician: str, max_seconds: float = DEFAULT_SCRUB_SECONDS) -> dict[str, Any]:
    report = scrub_store(_store(config), max_seconds=max_seconds).to_dict()
    outcome = (
        f"checked {report['frames_checked']} frame(s), repaired {len(report['repaired'])}, "
        f"marked {len(report['marked'])}"
    )
    _log(config, technician, "scrub", outcome, max_seconds=max_seconds, frames_left=report["frames_left"])
    return report | {"summary": outcome}


def slot_reset(config: NodeConfig, technician: str, slot: str, now: str) -> dict[str, Any]:
    store = _store(config)
    states = SlotStates(store.storage, store.limits)
    state = states.load(slot)
    plan = rules.plan_slot_reset(slot, state.to_dict())
    if not plan.allowed:
        raise ActionRefusedError(plan.refusal or "refused")
    states.write(ss.reset(state, now))
    _log(config, technician, "slot-reset", f"slot {slot} BAD mark cleared", slot=slot,
         generation=state.generation, was=state.reason)  # fmt: skip
    summary = f"slot {slot} BAD mark cleared; the next boot tries generation {state.generation} again"
    return {"slot": slot, "previous": state.to_dict(), "plan": plan.to_dict(), "summary": summary}


def rollback_plan(config: NodeConfig, generation: int, keyid: str | None = None) -> rules.ActionPlan:
    """The rollback rule with every check: floor, trust, and the key roles of the re-commit's signature.

    ``keyid``: the key that will sign (the privileged side knows it; else the trust store's device
    key of this node, ``rollback_check.signer_keyid``).
    """
    from appliance.console.rollback_check import recommit_problem, signer_keyid

    store = _store(config)
    rows = readmodel.generation_rows(store)
    newest = rows[0]["generation"] if rows else None
    floor = _floor(config)
    facts = readmodel.generation_facts(rows)
    plan = rules.plan_rollback(generation, floor, newest, facts)
    if not plan.allowed:
        return plan
    if keyid is None or not store.trust.has_roles:
        keyid = signer_keyid(store)
    return rules.plan_rollback(generation, floor, newest, facts, recommit_problem(store, generation, keyid, floor))


def rollback(
    config: NodeConfig, technician: str, generation: int, config_path: Path | None = None, restart: bool = True
) -> dict[str, Any]:
    """Re-commit generation ``generation``'s exact content as a new generation, then boot it."""
    from appliance import api
    from appliance.persist.committer import Committer
    from appliance.sources.tensors import sources_from_dict

    committer = Committer(config, EventLog(config.event_log, "console"))  # loads the device key: privileged side
    plan = rollback_plan(config, generation, committer.key.public.keyid)
    if not plan.allowed:
        _log(config, technician, "rollback", f"refused: {plan.refusal}", generation=generation)
        raise ActionRefusedError(plan.refusal or "refused")
    floor = committer.current_floor()
    loaded = api.load(committer.store, generation=generation, floor=floor)
    metadata = dict(loaded.metadata) | {"rolled_back_from": generation}
    with committer.run.commit_guard() as free:
        if not free:
            raise LockedError("a boot is running; roll back again when it has finished")
        result, _ = committer.store.commit(sources_from_dict(loaded.tensors), [committer.key], metadata, floor=floor)
    summary = f"generation {generation} re-committed as generation {result.generation} (slot {result.slot})"
    data: dict[str, Any] = {"rolled_back_from": generation, "committed": result.to_dict(), "plan": plan.to_dict(),
                            "summary": summary}  # fmt: skip
    _log(config, technician, "rollback", f"generation {generation} re-committed as {result.generation}",
         generation=generation, new_generation=result.generation, slot=result.slot)  # fmt: skip
    if restart:
        data["restart"] = restart_service(config, technician, config_path, f"rollback to generation {generation}")
        data["summary"] += "; " + data["restart"]["summary"]
    return data


def restart_service(config: NodeConfig, technician: str, config_path: Path | None = None,
                    reason: str = "technician request") -> dict[str, Any]:  # fmt: skip
    """Run the boot sequence again (it stops the service, restores the newest good checkpoint, canary, admit)."""
    from appliance.boot.control import SupervisorControl

    try:
        SupervisorControl(config.supervisor_socket, timeout=5).wait_ready(2.0)
    except SupervisorUnavailableError as exc:
        _log(config, technician, "restart-service", f"not restarted: {exc.problem}", reason=reason)
        summary = f"service not restarted ({exc.problem}); the newest good state is served at the next boot"
        return {"restarted": False, "problem": exc.problem, "summary": summary}
    if config_path is None:
        raise ActionRefusedError("restart-service needs the node.json path to run the boot sequence")
    cmd = [sys.executable, "-m", "appliance.cli.main", "boot", "--config", str(config_path), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)  # noqa: S603
    outcome = "serving again" if proc.returncode == 0 else f"boot exited {proc.returncode}"
    _log(config, technician, "restart-service", outcome, reason=reason, exit_code=proc.returncode)
    return {"restarted": proc.returncode == 0, "boot_exit_code": proc.returncode, "boot": _json_or_text(proc.stdout),
            "summary": f"boot sequence ran: {outcome}"}  # fmt: skip


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text[-4000:]


def diagnostics(config: NodeConfig, technician: str, out: Path) -> dict[str, Any]:
    from appliance.console.diagnostics import write_bundle

    members = write_bundle(config, out)
    _log(config, technician, "diagnostics", f"bundle written ({len(members)} files)", file=out.name)
    return {"file": str(out), "members": members, "summary": f"diagnostics bundle with {len(members)} files"}


def _import_store(config: NodeConfig) -> Store:
    store = _store(config)
    store.good_provider = SlotStates(store.storage, store.limits).good_generations
    return store


def usb_list() -> dict[str, Any]:
    from appliance.console import usb

    return {"sticks": [s.to_dict() for s in usb.list_sticks()]}


def usb_scan(config: NodeConfig, device: str) -> dict[str, Any]:
    """Mount the stick read-only, list its checkpoints with the import decision for each, unmount."""
    from appliance.console import usb

    with usb.mounted_device(config.run_dir, device) as (stick, root):
        found = usb.scan(root, _import_store(config), _floor(config))
    return {"stick": stick.to_dict(), "checkpoints": [c.to_dict() for c in found]}


def usb_import(config: NodeConfig, technician: str, device: str, generation: int,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Import one generation from a stick: verified before bulk copy, hashed as read, committed last."""
    from appliance.console import usb

    store, floor = _import_store(config), _floor(config)
    stick = usb.Stick(device, "")
    try:
        with usb.mounted_device(config.run_dir, device) as (stick, root):
            found = {c.generation: c for c in usb.scan(root, store, floor)}
            plan = rules.plan_import(device, found.get(generation), generation)
            if not plan.allowed:
                raise ActionRefusedError(plan.refusal or "refused")
            total = sum(b.size for b in _blobs(root, store, generation, floor))
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                if progress is not None:
                    progress(done[0], total)

            result = usb.import_from(root, store, generation, floor, advance)
    except ApplianceError as exc:
        _log(config, technician, "import", f"refused: {exc.problem}", device=device, generation=generation,
             stick=stick.serial or stick.label)  # fmt: skip
        raise
    summary = f"generation {generation} imported into slot {result['slot']} and committed (every blob verified)"
    if result.get("already"):
        summary = f"generation {generation} was already committed in slot {result['slot']}"
    _log(config, technician, "import", summary, device=device, generation=generation, slot=result["slot"],
         stick=stick.serial or stick.label)  # fmt: skip
    return {"stick": stick.to_dict(), "imported": result, "plan": plan.to_dict(), "summary": summary}


def diagnostics_usb(config: NodeConfig, technician: str, device: str) -> dict[str, Any]:
    """Write a diagnostics bundle onto a stick: the explicit, separate action that mounts it read-write.

    Imports always mount read-only; only this action asks for a read-write mount (still nosuid,
    nodev, noexec), writes one new file ``appliance-diagnostics-<UTC time>.tar.gz`` at the stick's
    top level (never overwriting one), flushes it and unmounts.
    """
    import tempfile
    import time

    from appliance.console import usb
    from appliance.console.diagnostics import write_bundle

    with tempfile.TemporaryDirectory(prefix="appliance-diag-") as tmp:
        local = Path(tmp) / "bundle.tar.gz"
        members = write_bundle(config, local)
        name = f"appliance-diagnostics-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz"
        try:
            with usb.mounted_device(config.run_dir, device, write=True) as (stick, root):
                _copy_durably(local, root / name)
        except (ApplianceError, OSError) as exc:
            problem = getattr(exc, "problem", None) or f"cannot write to the stick: {exc}"
            _log(config, technician, "diagnostics-usb", f"refused: {problem}", device=device)
            if isinstance(exc, ApplianceError):
                raise
            raise ActionRefusedError(f"the stick at {device} cannot take the bundle: {exc}") from exc
    _log(config, technician, "diagnostics-usb", f"bundle {name} written to the stick", device=device, file=name,
         stick=stick.serial or stick.label)  # fmt: skip
    summary = f"diagnostics bundle {name} ({len(members)} files) written to the stick; it is unmounted"
    return {"file": name, "members": members, "stick": stick.to_dict(), "summary": summary}


def _copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to the new file ``dst`` (never overwriting) and flush it to the medium."""
    import shutil

    with src.open("rb") as a, dst.open("xb") as b:
        shutil.copyfileobj(a, b)
        b.flush()
        os.fsync(b.fileno())


def _blobs(root: Path, store: Store, generation: int, floor: int) -> tuple[Any, ...]:
    from appliance.storage import LocalStorage
    from appliance.transfer import inspect_source

    return inspect_source(store, LocalStorage(root), generation=generation, floor=floor).blobs


def refuse_unknown(action: str) -> ApplianceError:
    return ActionRefusedError(f"unknown action {action!r:.40}; known: {', '.join(rules.ACTIONS)}")
