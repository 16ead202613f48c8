"""Retention and garbage collection inside one slot.

Owns: deciding what a slot keeps and deleting the rest in a crash-safe order. Kept
(rule G3, docs/design.md §6): the newest ``keep`` checkpoints whose record, bundle and
signature verify; the newest such checkpoint that holds tensors (so metadata-only commits
can never push the real model out); and every generation the caller protects — the newest
GOOD one and every pinned one (``appliance pin``, ``Store.pin``). Does not own choosing
*which* slot (the commit collects its target slot; ``appliance gc`` collects both).

Delete order (docs/design.md §6, rule G1): a checkpoint is un-committed first (its record is
unlinked and the directory synced), then its bundle; frames are unlinked last, and only if no
kept checkpoint *of the same slot* names them (slots share no files, so no cross-slot check
is needed). Temp files and uncommitted bundles are leftovers of interrupted commits; GC runs
under the writer lock, so no commit is in flight while they are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.errors import ApplianceError, StorageError
from appliance.format.digest import Digest
from appliance.format.statement import parse_bundle, parse_statement
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing import TrustStore
from appliance.storage import Storage
from appliance.storage.durable import TEMP_PREFIX
from appliance.store import layout
from appliance.store.discovery import open_checkpoint
from appliance.store.slot import SlotReader


@dataclass
class GcReport:
    slot: str
    kept: list[int] = field(default_factory=list)
    removed_checkpoints: list[int] = field(default_factory=list)
    removed_frames: int = 0
    removed_other: int = 0
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def collect_slot(
    storage: Storage,
    slot: str,
    trust: TrustStore,
    model: str,
    *,
    keep: int,
    protect: frozenset[int] = frozenset(),
    limits: Limits = DEFAULT_LIMITS,
) -> GcReport:
    report = GcReport(slot)
    reader = SlotReader(storage, slot, limits)
    if not reader.available():
        return report
    valid: list[int] = []
    with_tensors: list[int] = []
    for outcome in reader.records():  # newest first
        if outcome.record is None:
            continue
        try:
            opened = open_checkpoint(storage, outcome.record, trust, model, limits, check_frames=False)
        except ApplianceError:
            continue
        valid.append(outcome.generation)
        manifest = opened.verified.manifest
        if any(t.numel for t in manifest.tensors):  # tensor data: not zero-element tensors, not assets alone
            with_tensors.append(outcome.generation)
    names = reader.checkpoint_names()
    if not valid:  # G2: with nothing verifiable (e.g. a wrong trust store) delete no checkpoint
        _drop_leftovers(storage, slot, report)
        return report
    retained = valid[:keep]
    cutoff = min(retained)
    committed = {g for g, k, _ in names if k == "commit"}
    keep_gens = {g for g in committed if g >= cutoff} | set(retained) | (protect & set(valid))
    keep_gens |= set(with_tensors[:1])  # G3: the newest checkpoint with tensor data is never collected
    report.kept = sorted(keep_gens, reverse=True)
    _drop_checkpoints(storage, slot, names, keep_gens, report)
    _drop_leftovers(storage, slot, report)
    referenced = _referenced_frames(storage, slot, report.kept, limits)
    _drop_frames(storage, slot, referenced, report)
    return report


def _drop_checkpoints(
    storage: Storage, slot: str, names: list[tuple[int, str, str]], kept: set[int], report: GcReport
) -> None:
    """Remove records outside ``kept`` (then sync), then every bundle without a kept record."""
    directory = layout.checkpoints_dir(slot)
    records = [(g, n) for g, k, n in names if k == "commit" and g not in kept]
    for gen, name in records:
        _unlink(storage, f"{directory}/{name}", report)
        report.removed_checkpoints.append(gen)
    if records:
        storage.fsync_dir(directory)  # G1: un-committed before anything it names disappears
    for _, name in [(g, n) for g, k, n in names if k == "manifest" and g not in kept]:
        _unlink(storage, f"{directory}/{name}", report)
    report.removed_checkpoints.sort(reverse=True)


def _drop_leftovers(storage: Storage, slot: str, report: GcReport) -> None:
    """Temp files of interrupted writes and files no v1 writer creates."""
    for directory in (layout.checkpoints_dir(slot), layout.frames_dir(slot)):
        for name in storage.listdir(directory) or []:
            if name.startswith(TEMP_PREFIX) or (
                directory.endswith(layout.CHECKPOINTS) and layout.parse_checkpoint_name(name) is None
            ):
                _unlink(storage, f"{directory}/{name}", report, other=True)


def _referenced_frames(storage: Storage, slot: str, kept: list[int], limits: Limits) -> set[Digest]:
    """Frames named by kept bundles. Unverified parsing is enough: it only keeps files alive."""
    referenced: set[Digest] = set()
    for gen in kept:
        try:
            data = storage.read(layout.bundle_path(slot, gen), limits.manifest_max_bytes)
            manifest = parse_statement(parse_bundle(data, limits).payload, limits)
        except (FileNotFoundError, ApplianceError):
            continue
        referenced |= manifest.frame_index().keys()
    return referenced


def _drop_frames(storage: Storage, slot: str, referenced: set[Digest], report: GcReport) -> None:
    directory = layout.frames_dir(slot)
    removed = False
    for name in storage.listdir(directory) or []:
        digest = layout.parse_frame_name(name)
        if digest is not None and digest in referenced:
            continue
        other = digest is None
        _unlink(storage, f"{directory}/{name}", report, other=other)
        if not other:
            report.removed_frames += 1
        removed = True
    if removed:
        storage.fsync_dir(directory)


def _unlink(storage: Storage, path: str, report: GcReport, other: bool = False) -> None:
    regular = True
    try:
        size = storage.size(path) or 0
    except (ApplianceError, StorageError):
        size, regular = 0, False  # a planted symlink or device: remove the entry itself, never its target
    try:
        storage.unlink(path)
    except FileNotFoundError:
        return
    except (ApplianceError, StorageError):
        if regular:
            raise
        return  # a planted directory cannot be unlinked: leave it (never descend), never fail a commit
    report.freed_bytes += size
    if other:
        report.removed_other += 1
