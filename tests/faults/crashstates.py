"""Crash states built from a recorded operation log (LevelDB, RocksDB, ALICE and SQLite style).

A crash at cut ``k`` means operations ``ops[:k]`` were issued. An issued operation is *forced*
(it survives every crash) when a later issued barrier covers it — ``fsync`` of its file for a
write, ``fsync_dir`` of its directory for a name change; every other issued operation is
*optional*: the kernel may or may not have written it. Generators:

* ``cuts``      — every cut point twice: all issued operations persisted (a process crash)
                  and only the forced ones (the worst power cut).
* ``unsynced``  — forced operations plus a random subset of the optional ones (RocksDB's
                  ``DropRandomUnsyncedFileData``).
* ``orderings`` — ALICE: optional operation ``i`` lost while every other operation up to
                  ``j`` persists, for every legal pair.
* ``torn``      — an optional write persisted partially: truncated (0, 1, half, n-1, 4 KiB
                  aligned), grown with garbage or zeros (ALICE's append model), or with one
                  512-byte sector trashed (SQLite's crash VFS).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from appliance.storage.recording import Fsync, FsyncDir, Image, Op, Write, apply, covering_barrier

SECTOR = 512
TORN_KINDS = ("zero", "one", "half", "minus1", "aligned", "garbage", "zeros", "sector")


@dataclass(frozen=True)
class CrashState:
    kind: str  # "cut" | "durable" | "unsynced" | "ordering" | "torn"
    cut: int  # operations issued before the crash
    dropped: frozenset[int] = frozenset()  # issued operations that did not persist
    torn: tuple[int, str] | None = None  # (write op index, torn kind)

    def describe(self, ops: Sequence[Op]) -> str:
        parts = [f"{self.kind} crash after op {self.cut}/{len(ops)}"]
        if self.dropped:
            lost = ", ".join(f"#{i} {type(ops[i]).__name__}" for i in sorted(self.dropped)[:6])
            parts.append(f"lost [{lost}{', ...' if len(self.dropped) > 6 else ''}]")
        if self.torn:
            parts.append(f"op #{self.torn[0]} torn ({self.torn[1]})")
        return "; ".join(parts)


def optional_ops(ops: Sequence[Op], cut: int) -> list[int]:
    """Indices of issued operations (``< cut``) that no later issued barrier covers."""
    barriers: set[Op] = set()
    optional = []
    for i in range(cut - 1, -1, -1):
        op = ops[i]
        if isinstance(op, (Fsync, FsyncDir)):
            barriers.add(op)
            continue
        if covering_barrier(op) not in barriers:
            optional.append(i)
    return optional[::-1]


def torn_bytes(data: bytes, kind: str, rng: random.Random) -> bytes:
    n = len(data)
    if kind == "zero":
        return b""
    if kind == "one":
        return data[:1]
    if kind == "half":
        return data[: n // 2]
    if kind == "minus1":
        return data[: max(0, n - 1)]
    if kind == "aligned":
        return data[: (n // 4096) * 4096] if n > 4096 else data[: n // 2]
    if kind == "garbage":  # size grew first, the data never arrived (ALICE append model)
        keep = n // 3
        return data[:keep] + rng.randbytes(n - keep)
    if kind == "zeros":  # ext4 data=writeback: size durable, blocks unwritten
        keep = n // 3
        return data[:keep] + bytes(n - keep)
    if kind == "sector":
        if n == 0:
            return b"\xff" * SECTOR
        start = rng.randrange(0, max(1, n), SECTOR) if n > SECTOR else 0
        end = min(n, start + SECTOR)
        return data[:start] + rng.randbytes(end - start) + data[end:]
    raise ValueError(kind)


def build(base: Image, ops: Sequence[Op], state: CrashState, seed: int = 0) -> Image:
    """The file-system image a crash state leaves behind."""
    image = base.copy()
    rng = random.Random(seed * 1_000_003 + state.cut)
    for i in range(state.cut):
        if i in state.dropped:
            continue
        op = ops[i]
        if state.torn is not None and state.torn[0] == i:
            assert isinstance(op, Write)
            op = Write(op.inode, torn_bytes(op.data, state.torn[1], rng))
        apply(image, op)
    return image


def cuts(ops: Sequence[Op]) -> Iterator[CrashState]:
    for k in range(len(ops) + 1):
        yield CrashState("cut", k)
        optional = optional_ops(ops, k)
        if optional:
            yield CrashState("durable", k, frozenset(optional))


def unsynced(ops: Sequence[Op], per_cut: int, rng: random.Random) -> Iterator[CrashState]:
    for k in range(1, len(ops) + 1):
        optional = optional_ops(ops, k)
        if len(optional) < 2:
            continue
        for _ in range(per_cut):
            dropped = frozenset(i for i in optional if rng.random() < 0.5)
            yield CrashState("unsynced", k, dropped)


def orderings(ops: Sequence[Op]) -> Iterator[CrashState]:
    """ALICE: op ``i`` lost while all later issued ops up to ``j`` persist (``i < j - 1``)."""
    for j in range(2, len(ops) + 1):
        for i in optional_ops(ops, j):
            if i < j - 1:  # i == j - 1 is the plain "durable"/"cut" family
                yield CrashState("ordering", j, frozenset({i}))


def pair_orderings(ops: Sequence[Op], rng: random.Random, per_cut: int) -> Iterator[CrashState]:
    """Two optional ops lost while everything else up to ``j`` persists (sampled; nightly)."""
    for j in range(3, len(ops) + 1):
        optional = optional_ops(ops, j)
        if len(optional) < 2:
            continue
        for _ in range(per_cut):
            yield CrashState("ordering", j, frozenset(rng.sample(optional, 2)))


def torn(ops: Sequence[Op]) -> Iterator[CrashState]:
    """Every write torn every way, at the last cut where it is still optional."""
    for i, op in enumerate(ops):
        if not isinstance(op, Write):
            continue
        barrier = next((j for j in range(i + 1, len(ops)) if ops[j] == Fsync(op.inode)), len(ops))
        for kind in TORN_KINDS:
            yield CrashState("torn", barrier, torn=(i, kind))
