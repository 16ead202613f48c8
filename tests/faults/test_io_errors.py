"""EIO and ENOSPC at every mutating call of every write path (LevelDB/SQLite I/O-error style).

For each call number ``n`` of a write path and each error (EIO, ENOSPC, and a create that
leaves half its data behind): the operation raises the typed error, is not acknowledged, never
retries an fsync failure into a commit record (R4), boots to the acknowledged checkpoint or
(only if its record was already in place) the in-flight one, and the next persist succeeds.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from appliance.errors import StorageError, StorageFullError, StorageIOError
from appliance.storage import durable
from appliance.storage.recording import Image, RecordingStorage
from appliance.store.scrub import scrub
from appliance.store.store import Store

from . import counts
from .boot import BOOT, Expectation, check
from .crashstates import CrashState, build, optional_ops
from .inject import FaultyStorage
from .model import History, Keys, make_config
from .workloads import Recorder

pytestmark = pytest.mark.faults

ERRORS = {"EIO": (errno.EIO, StorageIOError), "ENOSPC": (errno.ENOSPC, StorageFullError)}


@dataclass
class Subject:
    base: Image
    keep: int
    acked: int | None  # what boot yields before the operation
    contents: dict[int, str]  # generation -> content digest, including what the action commits
    step: int  # history step the action commits (if it commits)
    action: Callable[[Store, int], int | None]  # returns the generation it makes bootable
    commits: bool = True  # the in-flight generation needs its commit record in place


def _commit(store: Store, step: int, history: History, keys: Keys) -> int:
    result, _ = store.commit(history.sources(step), [keys.signer], {"step": step})
    return result.generation


def _subjects(keys: Keys, history: History) -> dict[str, Subject]:
    def committing(store: Store, step: int) -> int:
        return _commit(store, step, history, keys)

    def collecting(store: Store, step: int) -> None:
        store.gc()

    def scrubbing(store: Store, step: int) -> int:
        scrub(store.storage, keys.trust, store.config.model)
        return 4

    def contents(rec: Recorder, gen: int, step: int) -> dict[int, str]:
        return rec.contents | {gen: history.digest(step)}

    out = {}
    rec = Recorder(keys, history)
    out["first-commit"] = Subject(rec.storage.image(), 2, None, contents(rec, 1, 1), 1, committing)
    rec.commit()
    rec.commit()
    out["delta-commit"] = Subject(rec.storage.image(), 2, 2, contents(rec, 3, 3), 3, committing)
    rec.commit()
    out["commit-with-gc"] = Subject(rec.storage.image(), 1, 3, contents(rec, 4, 4), 4, committing)
    rec.commit()
    out["appliance-gc"] = Subject(rec.storage.image(), 1, 4, dict(rec.contents), 0, collecting, commits=False)
    rec.rot_frame("B", 4, shared=True)
    out["scrub-repair"] = Subject(rec.storage.image(), 2, 3, dict(rec.contents), 0, scrubbing, commits=False)
    return out


@pytest.fixture(scope="module")
def subjects(keys: Keys, history: History) -> dict[str, Subject]:
    return _subjects(keys, history)


def _run(subject: Subject, keys: Keys, faulty: FaultyStorage) -> int | None:
    store = Store(faulty, make_config(keep=subject.keep), keys.trust)
    return subject.action(store, subject.step)


@pytest.mark.parametrize("name", ["first-commit", "delta-commit", "commit-with-gc", "appliance-gc", "scrub-repair"])
@pytest.mark.parametrize("error", list(ERRORS))
def test_io_error_at_every_call_fails_cleanly_and_is_never_acknowledged(
    name: str, error: str, subjects: dict[str, Subject], keys: Keys, history: History
) -> None:
    """Each failing call raises its typed error; boot stays at acked; the next persist succeeds."""
    problems = _inject_everywhere(subjects[name], name, error, keys, history)
    assert not problems, "\n".join(problems[:10])


def test_harness_catches_an_fsync_error_retried_into_a_commit(
    subjects: dict[str, Subject], keys: Keys, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: a durable write that retries a failed fsync is flagged (R4)."""
    original = durable.DurableBatch.add

    def retrying_add(self: durable.DurableBatch, path: str, data: bytes | memoryview) -> None:
        try:
            original(self, path, data)
        except StorageError:
            self._broken = None
            original(self, path, data)  # "the second fsync succeeded, so the data is safe" (it is not)

    monkeypatch.setattr(durable.DurableBatch, "add", retrying_add)
    problems = _inject_everywhere(subjects["delta-commit"], "delta-commit", "EIO", keys, history, tally=False)
    counts.add("negative controls caught", bool(problems))
    assert any("R4" in p for p in problems)


def _inject_everywhere(
    subject: Subject, name: str, error: str, keys: Keys, history: History, *, tally: bool = True
) -> list[str]:
    dry = FaultyStorage(RecordingStorage(subject.base))
    inflight = _run(subject, keys, dry)
    code, expected_type = ERRORS[error]
    problems: list[str] = []
    for n in range(len(dry.calls)):
        for partial in (False, True) if dry.calls[n].action == "create" else (False,):
            storage = RecordingStorage(subject.base)
            faulty = FaultyStorage(storage, fail_at=n, errno_=code, partial=partial)
            if tally:
                counts.add("ioerr.injected")
            where = f"{name}: {error} at call {n} ({dry.calls[n].action} {dry.calls[n].path}, partial={partial})"
            try:
                _run(subject, keys, faulty)
            except StorageError as exc:
                if not isinstance(exc, expected_type):
                    problems.append(f"{where}: raised {type(exc).__name__}, expected {expected_type.__name__}")
            else:
                if name != "scrub-repair":  # a failed repair is reported as a mark, not raised
                    problems.append(f"{where}: the operation reported success")
            problems += _after_failure(subject, keys, history, storage, faulty, inflight, where)
    return problems


def _after_failure(
    subject: Subject,
    keys: Keys,
    history: History,
    storage: RecordingStorage,
    faulty: FaultyStorage,
    inflight: int | None,
    where: str,
) -> list[str]:
    problems = []
    failed = faulty.failed
    assert failed is not None
    if failed.action in ("fsync", "fsync directory"):
        later = faulty.calls[failed.index + 1 :]
        retried = [c for c in later if c.action in ("create", "rename") and c.path.endswith(".commit.json")]
        if retried:
            problems.append(f"{where}: after the fsync error it still wrote {retried[0].path} (R4)")
    record_written = any(c.action == "rename" and c.path.endswith(".commit.json") for c in faulty.calls[: failed.index])
    may_boot_inflight = inflight is not None and (record_written or not subject.commits)
    expect = Expectation.of(subject.acked, [inflight] if may_boot_inflight else [], subject.contents)
    config = make_config(keep=subject.keep)
    for label, image in (("live", storage.image()), ("power cut", _durable_only(subject.base, storage))):
        try:
            check(BOOT(RecordingStorage(image), config, keys.trust), expect, f"{where}, {label}")
        except AssertionError as exc:
            problems.append(str(exc))
    store = Store(storage, config, keys.trust)
    generation = _commit(store, 90, history, keys)
    outcome = BOOT(storage, config, keys.trust)
    if outcome.generation != generation or outcome.contents != history.digest(90):
        problems.append(f"{where}: the next persist (gen {generation}) booted as {outcome.describe()}")
    return problems


def _durable_only(base: Image, storage: RecordingStorage) -> Image:
    ops = storage.ops
    return build(base, ops, CrashState("durable", len(ops), frozenset(optional_ops(ops, len(ops)))))
