"""Every write path of the store, recorded on ``RecordingStorage`` for crash-state construction.

A ``Recorded`` write path is the durable image before the operation, the operations it
issued, and what boot may yield after a crash anywhere inside it. ``Recorder`` drives the
real ``Store`` (commit with its GC, compaction, ``appliance gc``, scrub) on one history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from appliance.crypto import KekSource
from appliance.storage.recording import Image, Op, RecordingStorage
from appliance.store import layout
from appliance.store.bootstate import SlotStates
from appliance.store.config import StoreConfig
from appliance.store.discovery import open_checkpoint
from appliance.store.scrub import scrub
from appliance.store.slot import SlotReader
from appliance.store.store import Store

from .boot import BOOT, Expectation
from .model import History, Keys, empty_store_storage, make_config


@dataclass
class Recorded:
    path: str  # which write path, e.g. "delta commit"
    base: Image
    ops: list[Op]
    acked_before: int | None  # what boot yielded before the first action
    acks: list[tuple[int, int | None]]  # (ops issued when an action returned, generation it committed)
    contents: dict[int, str]
    config: StoreConfig
    next_step: int  # history step a follow-up commit uses
    heals: frozenset[int] = frozenset()  # generations a repair may make bootable (never required)

    def expect_at(self, cut: int) -> Expectation:
        """Boot after a crash at ``cut``: the newest acknowledged generation or the one in flight."""
        acked, inflight = self.acked_before, None
        for end, generation in self.acks:
            if end <= cut:
                acked = generation if generation is not None else acked
            else:
                inflight = generation
                break
        return Expectation.of(acked, [g for g in (inflight, *self.heals) if g is not None], self.contents)


class Recorder:
    """One store on recording storage, its history, and the generation -> contents map."""

    def __init__(
        self, keys: Keys, history: History, config: StoreConfig | None = None, kek: KekSource | None = None
    ) -> None:
        self.keys = keys
        self.history = history
        self.config = config or make_config(encrypt=kek is not None)
        self.storage = empty_store_storage(kek)
        self.step = 0
        self.contents: dict[int, str] = {}

    @property
    def store(self) -> Store:
        store = Store(self.storage, self.config, self.keys.trust)
        store.good_provider = SlotStates(self.storage).good_generations  # as the persist daemon does
        return store

    def commit(self, *, full: bool = False) -> int:
        self.step += 1
        result, _ = self.store.commit(
            self.history.sources(self.step), [self.keys.signer], {"step": self.step}, full=full
        )
        self.contents[result.generation] = self.history.digest(self.step)
        return result.generation

    def booted(self) -> int | None:
        return BOOT(self.storage, self.config, self.keys.trust).generation

    def record(self, path: str, *actions: Callable[[], int | None], heals: frozenset[int] = frozenset()) -> Recorded:
        """Run ``actions`` in turn from a durable image, noting where each one returned."""
        acked = self.booted()
        base = self.storage.image()
        self.storage = RecordingStorage(base)
        acks: list[tuple[int, int | None]] = []
        for action in actions:
            generation = action()
            acks.append((len(self.storage.ops), generation))
        ops = list(self.storage.ops)
        return Recorded(path, base, ops, acked, acks, dict(self.contents), self.config, self.step + 1, heals)

    def rot_frame(self, slot: str, generation: int, *, shared: bool = False) -> str:
        """Flip a byte of one frame of ``slot``/``generation`` outside the log (bit rot).

        ``shared``: pick a frame whose twin is also stored in the other slot.
        """
        record = next(r.record for r in SlotReader(self.storage, slot).records() if r.generation == generation)
        assert record is not None
        opened = open_checkpoint(self.storage, record, self.keys.trust, self.config.model)
        other = SlotReader(self.storage, "B" if slot == "A" else "A")
        frames = sorted(opened.verified.manifest.frame_index().values(), key=lambda f: f.digest)
        frame = next(f for f in frames if not shared or other.frame_size(f.digest) == f.size)
        path = layout.frame_path(slot, frame.digest)
        data = bytearray(self.storage.read(path, 1 << 30))
        data[len(data) // 2] ^= 0x01
        image = self.storage.image()
        image.files[_inode_of(image, path)] = bytes(data)
        self.storage = RecordingStorage(image)
        return frame.digest.hex


def _inode_of(image: Image, path: str) -> int:
    inode = 0
    for part in path.split("/"):
        inode = image.dirs[inode][part]
    return inode


PATHS = {  # parameter id -> write path; write_paths() records them in this order
    "first": "first commit (all frames full)",
    "second": "second commit (reused frames copied into the other slot)",
    "delta": "delta commit onto a delta chain",
    "compact": "compaction commit (full=True)",
    "two-commits": "two consecutive delta commits",
    "gc-keep2": "commit whose GC drops a checkpoint (keep=2)",
    "gc-keep1": "commits whose GC drops the slot's previous checkpoint (keep=1)",
    "commit-then-gc": "commit, then appliance gc after retention lowered to 1",
    "rotten-target": "commit replacing a rotten frame in the target slot",
    "scrub-repair": "scrub repairing a rotten frame from its twin in the other slot",
}


def write_paths(keys: Keys, history: History, kek: KekSource | None = None) -> dict[str, Recorded]:
    """Every write path the store has today; each a separate crash-test subject.

    ``kek``: the same paths on an encrypted store (every frame sealed, docs/design.md §14).
    """
    out: list[Recorded] = []
    rec = Recorder(keys, history, kek=kek)
    out.append(rec.record(PATHS["first"], rec.commit))
    out.append(rec.record(PATHS["second"], rec.commit))
    out.append(rec.record(PATHS["delta"], rec.commit))
    out.append(rec.record(PATHS["compact"], lambda: rec.commit(full=True)))
    out.append(rec.record(PATHS["two-commits"], rec.commit, rec.commit))
    out.append(rec.record(PATHS["gc-keep2"], rec.commit))

    lean = Recorder(keys, history, make_config(keep=1, encrypt=kek is not None), kek)
    lean.commit()
    out.append(lean.record(PATHS["gc-keep1"], lean.commit, lean.commit))
    out.append(rec.record(PATHS["commit-then-gc"], rec.commit, lambda: _gc(rec, 1)))

    rot = Recorder(keys, history, kek=kek)
    rot.commit()
    rot.commit()
    rot.rot_frame("A", 1)
    out.append(rot.record(PATHS["rotten-target"], rot.commit))

    heal = Recorder(keys, history, kek=kek)
    for _ in range(3):
        heal.commit()
    heal.rot_frame("A", 3, shared=True)
    # Boot before the scrub may already have marked generation 3 BAD (its frame failed), and BAD
    # sticks after the repair; so the healed generation is allowed, not required.
    out.append(heal.record(PATHS["scrub-repair"], lambda: _scrub(heal), heals=frozenset({3})))
    assert [r.path for r in out] == list(PATHS.values())
    return dict(zip(PATHS, out, strict=True))


def _scrub(rec: Recorder) -> None:
    report = scrub(rec.storage, rec.keys.trust, rec.config.model)
    assert report.repaired, "the scrub write path must repair something"


def _gc(rec: Recorder, keep: int) -> None:
    rec.config = dataclasses.replace(rec.config, keep=keep)
    rec.store.gc()
