"""Verify while a commit runs: a checkpoint the commit's GC retires mid-verify is not "damaged".

``appliance verify`` takes no lock (it must not stall the persistence watchdog), so a commit
can run while it reads. The commit's GC un-commits old checkpoints in the order record ->
bundle -> frames (rule G1), so verify can list a record and then find its bundle or frames
gone. Found on a VM boot: ``verify --deep`` exit 1 with ``ManifestError`` seconds after the
watchdog committed. The interleavings below are forced at each read verify makes (record,
bundle, frame) by ``FaultyStorage``'s read hook running a real commit just before that read —
a fault-injection seam around real ``RecordingStorage`` and ``Store`` code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from appliance.errors import StorageError
from appliance.store import layout
from appliance.store.verify import verify_store

from .inject import FaultyStorage
from .model import MODEL_ID, History, Keys, empty_store_storage, make_config, open_store

pytestmark = pytest.mark.faults


def _commit_before_first_read(hit: Callable[[str], bool], action: Callable[[], None]) -> Callable[[str], None]:
    """An ``on_read`` hook: the first read of a path that ``hit`` matches runs ``action`` first."""
    fired: list[str] = []

    def hook(path: str) -> None:
        if not fired and hit(path):
            fired.append(path)
            action()

    hook.fired = fired  # type: ignore[attr-defined]
    return hook


def _store_with_two_slots(keys: Keys, history: History) -> Any:
    """keep=1: slot A holds generation 3, slot B generation 2; the next commit goes to B and retires 2."""
    store = open_store(empty_store_storage(), keys.trust, make_config(keep=1))
    for step in (1, 2, 3):
        store.commit(history.sources(step), [keys.signer], {"step": step})
    return store


def _frames_only_generation_2_names(keys: Keys, history: History) -> set[str]:
    """Frame paths of B/2 that the commit of generation 4 deletes (computed on a twin store)."""
    twin = _store_with_two_slots(keys, history)
    old = set(twin.select(generation=2).opened.verified.manifest.frame_index())
    twin.commit(history.sources(4), [keys.signer], {"step": 4})
    new = set(twin.select(generation=4).opened.verified.manifest.frame_index())
    gone = {layout.frame_path("B", d) for d in old - new}
    assert gone, "generation 4 keeps every frame of generation 2: the frame case would test nothing"
    return gone


def _reads(keys: Keys, history: History) -> dict[str, Callable[[str], bool]]:
    gone = _frames_only_generation_2_names(keys, history)
    return {
        "record": lambda p: p == layout.record_path("B", 2),
        "bundle": lambda p: p == layout.bundle_path("B", 2),
        "frame": lambda p: p in gone,
    }


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("read", ["record", "bundle", "frame"])
def test_verify_during_a_commit_never_reports_a_checkpoint_the_commit_retired_as_damaged(
    read: str, deep: bool, keys: Keys, history: History
) -> None:
    store = _store_with_two_slots(keys, history)

    def commit_generation_4() -> None:
        result, gc = store.commit(history.sources(4), [keys.signer], {"step": 4})
        assert (result.slot, result.generation, gc.removed_checkpoints) == ("B", 4, [2])

    hook = _commit_before_first_read(_reads(keys, history)[read], commit_generation_4)
    report = verify_store(FaultyStorage(store.storage, on_read=hook), keys.trust, MODEL_ID, deep=deep)

    assert hook.fired, "the commit never ran inside verify: the test exercised nothing"
    failed = [(c.slot, c.generation, c.error_class, c.error) for c in report.checkpoints if not c.ok]
    assert failed == [], f"verify reported a retired checkpoint as damaged: {failed}"
    assert report.all_ok and report.newest_valid is not None
    assert (report.newest_valid.slot, report.newest_valid.generation) in {("A", 3), ("B", 4)}
    assert ("B", 2) not in {(c.slot, c.generation) for c in report.checkpoints}  # retired: not judged at all
    assert store.verify(deep=deep).all_ok  # and the store the commit left verifies


def test_a_committed_checkpoint_whose_bundle_is_gone_is_still_reported_damaged(keys: Keys, history: History) -> None:
    """Negative control: the retirement rule must not hide real damage (the record is still there)."""
    store = _store_with_two_slots(keys, history)
    store.storage.unlink(layout.bundle_path("B", 2))
    report = store.verify()
    bad = [(c.slot, c.generation, c.error_class) for c in report.checkpoints if not c.ok]
    assert bad == [("B", 2, "ManifestError")]


def test_a_committed_checkpoint_missing_a_frame_is_still_reported_damaged(keys: Keys, history: History) -> None:
    store = _store_with_two_slots(keys, history)
    frame = next(iter(store.select(generation=2).opened.verified.manifest.frame_index().values()))
    store.storage.unlink(layout.frame_path("B", frame.digest))
    report = store.verify()
    bad = [(c.slot, c.generation, c.error_class) for c in report.checkpoints if not c.ok]
    assert bad == [("B", 2, "FrameMissingError")]


def test_a_commit_failing_after_its_record_is_renamed_leaves_no_record_naming_a_removed_bundle(
    keys: Keys, history: History
) -> None:
    """W4 with G1's order: the fsync of the record's directory fails after the rename.

    The commit is not acknowledged and removes what it created. It must un-commit its record
    first; before, it removed the bundle and left the record, so every reader saw the
    in-flight generation as a damaged one (``ManifestError``: bundle missing, record exists).
    """
    probe = FaultyStorage(empty_store_storage())
    open_store(probe.inner, keys.trust, make_config()).commit(history.sources(1), [keys.signer], {"step": 1})
    open_store(probe, keys.trust, make_config()).commit(history.sources(2), [keys.signer], {"step": 2})
    renamed = next(c.index for c in probe.calls if c.action == "rename" and c.path == layout.record_path("B", 2))
    sync = next(c.index for c in probe.calls[renamed:] if c.action == "fsync directory")

    storage = empty_store_storage()
    open_store(storage, keys.trust, make_config()).commit(history.sources(1), [keys.signer], {"step": 1})
    faulty = FaultyStorage(storage, fail_at=sync)
    with pytest.raises(StorageError):
        open_store(faulty, keys.trust, make_config()).commit(history.sources(2), [keys.signer], {"step": 2})
    assert faulty.failed is not None and faulty.failed.path == layout.checkpoints_dir("B")

    assert storage.size(layout.record_path("B", 2)) is None, "the failed commit left its record behind"
    report = verify_store(storage, keys.trust, MODEL_ID, deep=True)
    assert [(c.slot, c.generation, c.ok) for c in report.checkpoints] == [("A", 1, True)]
