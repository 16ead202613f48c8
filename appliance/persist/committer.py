"""Committing one state export as a signed checkpoint, with the slot states wired into the store.

Owns: ``Committer`` — when a commit may happen (the service serves a checkpoint proven GOOD,
no recovery mode, target slot mounted), and committing a validated export through
``Store.commit`` with the device key, the anti-rollback floor and ``good_provider`` set from
the slot states, so the commit lands in the slot that does not hold the newest GOOD state.
The committer remembers the raw state of its last commit (``store.lastcommit``), so the next
delta commit neither re-reads nor re-verifies its own parent. Every export the watchdog
commits is first authenticated (``authentic``: the serving service's receipt, provenance
against the handoff) and compared with its parent: an export whose tensors equal the newest
checkpoint's is removed with a ``persist.unchanged`` event instead of becoming an empty
generation. Does not own scanning the outbox or scheduling (``daemon``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.errors import NoValidCheckpointError, SlotUnavailableError
from appliance.events import EventLog
from appliance.format.handoff import Admit
from appliance.format.plan import choose_target_slot
from appliance.node.config import NodeConfig
from appliance.node.floor import FloorUnreadableError, open_floor
from appliance.node.identity import open_node_store
from appliance.node.mounts import unavailable_slots
from appliance.node.rundir import RunDir
from appliance.persist.authentic import ControlReceipts, Receipts, check_receipt
from appliance.signing import SigningKey
from appliance.sources.export import OpenedExport, open_export, remove_durably
from appliance.store.bootstate import SlotStates
from appliance.store.commit import CommitResult
from appliance.store.discovery import scan, select
from appliance.store.lastcommit import LastCommit


class Committer:
    def __init__(self, config: NodeConfig, events: EventLog, receipts: Receipts | None = None) -> None:
        self.config = config
        self.receipts = receipts or ControlReceipts(config.control_socket)
        self.events = events
        self.store = open_node_store(config)
        self.last = LastCommit(config.persist_keep_bytes)  # its own parent, never re-read or re-verified
        self.states = SlotStates(self.store.storage, self.store.limits)
        self.store.good_provider = self.states.good_generations
        self.key = SigningKey.load(config.signing_key)
        self.floor = open_floor(config)
        self.run = RunDir(config.run_dir)

    def not_ready(self) -> str | None:
        """Why exports must wait now, or ``None`` when a commit may go ahead."""
        if self.run.read_recovery() is not None:
            return "the node is in recovery mode"
        handoff = self.run.read_handoff()
        if handoff is None or handoff.admit is not Admit.SELF:
            return "the service does not yet serve a checkpoint proven GOOD"
        return None

    def target_slot(self) -> str:
        """The slot the next commit writes; refused if it is missing or not mounted."""
        good = self.states.good_generations()
        target = choose_target_slot(scan(self.store.storage, self.store.limits).views(good))
        missing = unavailable_slots(self.config.store, self.config.require_mounts)
        if target in missing:
            raise SlotUnavailableError(f"slot {target} (the commit target) is unavailable: {missing[target]}")
        return target

    def current_floor(self) -> int:
        try:
            return self.floor.read()
        except FloorUnreadableError:
            return 0  # generations only need to be above every generation seen; boot repairs the floor

    def parent(self) -> tuple[int, str | None] | None:
        """The generation a commit would derive from, with its content digest (``None``: no checkpoint)."""
        try:
            sel = select(
                self.store.storage,
                self.store.trust,
                self.store.config.model,
                floor=self.current_floor(),
                limits=self.store.limits,
            )  # the parent commit() derives from
        except NoValidCheckpointError:
            return None
        digest = sel.opened.verified.manifest.metadata.get("content_sha256")
        return sel.opened.generation, digest if isinstance(digest, str) else None

    def commit_file(
        self, path: Path, progress: Callable[[int], None] | None = None, *, produced_here: bool = False
    ) -> CommitResult | None:
        """Authenticate, validate and commit ``path``; the export is removed after a commit or when unchanged.

        ``ExportFileError`` if the file is invalid, ``UnauthenticExportError`` if the serving service does
        not vouch for it (``produced_here``: the caller wrote it itself in this process, e.g. ``seed``).
        Returns ``None`` when its tensors equal the parent's (nothing committed).
        """
        opened = open_export(path, self.last)
        committed = False
        try:
            if not produced_here:
                check_receipt(path.name, opened.info, self.receipts.receipt(path.name), self.run.read_handoff())
                parent = self.parent()
                if parent is not None and parent[1] == opened.info.content_sha256:
                    self.events.emit("persist.unchanged", file=path.name, generation=parent[0])
                    result = None
                else:
                    result = self._commit(path, opened, progress)
            else:
                result = self._commit(path, opened, progress)
            committed = result is not None
        finally:
            opened.close()
            if not committed:
                self.last.discard_lent()
        remove_durably(path)
        return result

    def _commit(self, path: Path, opened: OpenedExport, progress: Callable[[int], None] | None) -> CommitResult:
        self.target_slot()
        self.events.emit("persist.started", file=path.name, raw_bytes=opened.info.raw_bytes, step=opened.info.step)
        result, gc = self.store.commit(
            opened.model.sources,
            [self.key],
            opened.info.checkpoint_metadata(),
            floor=self.current_floor(),
            progress=progress,
            last=self.last,
        )
        self.events.emit(
            "persist.committed",
            file=path.name,
            generation=result.generation,
            slot=result.slot,
            seconds=round(result.seconds, 6),
            written_bytes=result.written_bytes,
            frames=result.counts,
            step=opened.info.step,
            export_pause_s=opened.info.pause_s,
            gc_removed=gc.removed_checkpoints,
            signer_role=result.authorization.role if result.authorization else None,
            release_base=result.authorization.release_base.generation if result.authorization else None,
        )
        return result
