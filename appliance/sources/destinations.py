"""Restore destinations: caller tensors of any layout, device and aliasing, as restore targets.

Owns: ``plan_destinations`` — turning ``{name: torch.Tensor}`` (a model's ``state_dict()``, the
``into`` of ``appliance.api.load``) into what ``appliance.store.restore`` writes into, and
``DestinationPlan.finish`` for the part that can only be done after every frame verified.
Does not own reading frames (``appliance.store.restore``) or choosing checkpoints (``api``).

Layouts (docs/design.md §6.3.1): a dense, contiguous CPU tensor without conj/neg bits is written
in place through a byte view; any other strided tensor (``channels_last``, a transposed
parameter, a slice or other view, a CUDA tensor, a lazy conj/neg view) gets a ``TensorSink``
that copies each decoded frame into its logical elements (C order), so the memory cost is one
frame per restore worker, never a copy of the tensor. Meta, sparse, nested, quantized and other
non-strided tensors cannot hold restored bytes: ``TensorMismatchError`` names the tensor.

Aliasing (§6.3.1): destinations that share memory are grouped by storage and byte extent.
* *Tied* (every member is the same view: same memory, dtype, shape and strides, the
  ``lm_head``/embedding case): the members' frames must have equal raw SHA-256 digests — else
  ``AliasingConflictError`` names both — and only the first member is restored.
* *Overlapping otherwise* (views of one buffer that overlap, an expanded tensor): every member
  is restored into private staging memory; ``finish`` checks, byte address by byte address,
  that all members agree, and only then writes the caller's memory.
The result never depends on thread timing: either every shared byte has one agreed value, or
the restore is refused before the shared memory is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from appliance.codec.transform import U8
from appliance.errors import AliasingConflictError, TensorMismatchError
from appliance.format.manifest import TensorEntry
from appliance.format.shown import a_or_an
from appliance.sources.tensors import check_strided, torch_dtype
from appliance.storage import Storage
from appliance.store.discovery import OpenCheckpoint
from appliance.store.restore import Destination, Progress, RestoreStats, restore_into


class TensorSink:
    """A ``Sink`` over a strided tensor: frame bytes (C order) -> the tensor's logical elements."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.itemsize = tensor.element_size()
        self.nbytes = tensor.numel() * self.itemsize

    def write(self, offset: int, data: U8) -> None:
        start, count = offset // self.itemsize, data.size // self.itemsize
        src = torch.from_numpy(data).view(self.tensor.dtype)
        with torch.no_grad():
            copy_range(self.tensor, start, start + count, src.to(self.tensor.device))


def copy_range(t: torch.Tensor, start: int, stop: int, src: torch.Tensor) -> None:
    """Copy ``src`` (1-D, ``stop - start`` elements) into the C-order elements ``start:stop`` of ``t``.

    The range is cut into at most two partial rows per dimension and one block of whole rows,
    each a plain view of ``t`` written with ``copy_`` (depth bounded by ``t.dim()`` <= 64).
    """
    if stop <= start:
        return
    if t.dim() == 0:
        t.copy_(src.reshape(()))
        return
    if t.dim() == 1:
        t[start:stop].copy_(src)
        return
    inner = math.prod(t.shape[1:])
    first, last = start // inner, (stop - 1) // inner
    if first == last:
        copy_range(t[first], start - first * inner, stop - first * inner, src)
        return
    pos = start
    if start % inner:
        end = (first + 1) * inner
        copy_range(t[first], start - first * inner, inner, src[: end - start])
        pos, first = end, first + 1
    whole = stop // inner
    if whole > first:
        t[first:whole].copy_(src[pos - start : whole * inner - start].reshape(t[first:whole].shape))
        pos = whole * inner
    if pos < stop:
        copy_range(t[whole], 0, stop - pos, src[pos - start :])


def byte_view_or_sink(name: str, t: torch.Tensor) -> Destination:
    """The cheapest way to write ``t``: its own bytes if plain, else a ``TensorSink``."""
    check_strided(name, t, TensorMismatchError)
    if t.device.type == "cpu" and t.is_contiguous() and not t.is_conj() and not t.is_neg():
        if t.numel() == 0:
            return np.empty(0, np.uint8)
        flat = t.detach().as_strided((t.numel(),), (1,))  # contiguous: size-1 dims may carry any stride
        view: U8 = flat.view(torch.uint8).numpy()
        return view
    return TensorSink(t)


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` of ``t``'s storage that ``t`` can touch (empty tensors: (0, 0))."""
    if t.numel() == 0:
        return 0, 0
    size = t.element_size()
    lo = int(t.storage_offset()) * size
    span = sum((int(d) - 1) * int(s) for d, s in zip(t.shape, t.stride(), strict=True)) + 1
    return lo, lo + span * size


@dataclass
class _Member:
    name: str
    tensor: torch.Tensor
    lo: int
    hi: int


@dataclass
class _Overlap:
    """Destinations that overlap in one storage but are not all the same view: staged, checked, written."""

    members: list[_Member]
    staged: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def lo(self) -> int:
        return min(m.lo for m in self.members)

    def check(self) -> list[torch.Tensor]:
        """Each member's byte addresses; ``AliasingConflictError`` if two disagree on a byte."""
        lo = self.lo
        hi = max(m.hi for m in self.members)
        image = torch.zeros(hi - lo, dtype=torch.uint8)
        owner = torch.full((hi - lo,), -1, dtype=torch.int32)
        plan = []
        for index, m in enumerate(self.members):
            addr = _byte_addresses(m.tensor, lo)
            values = self.staged[m.name].reshape(-1).view(torch.uint8)
            known = owner[addr]
            clash = (known >= 0) & (image[addr] != values)
            if bool(clash.any()):
                other = self.members[int(known[clash][0])].name
                raise AliasingConflictError(
                    f"destinations {other!r} and {m.name!r} share memory, but the checkpoint holds different "
                    "bytes for them"
                )
            image[addr], owner[addr] = values, index
            if bool((image[addr] != values).any()):
                raise AliasingConflictError(
                    f"destination {m.name!r} maps several elements onto one memory location (expanded or "
                    "as_strided with overlapping strides), but the checkpoint holds different values for them"
                )
            plan.append(addr)
        return plan

    def write(self, addresses: list[torch.Tensor]) -> None:
        target = torch.empty(0, dtype=torch.uint8, device=self.members[0].tensor.device)
        target.set_(self.members[0].tensor.untyped_storage())
        with torch.no_grad():
            for m, addr in zip(self.members, addresses, strict=True):
                target[addr + self.lo] = self.staged[m.name].reshape(-1).view(torch.uint8).to(target.device)


def _byte_addresses(t: torch.Tensor, lo: int) -> torch.Tensor:
    """Storage byte address (minus ``lo``) of every byte of ``t``, in C order of its elements."""
    size = t.element_size()
    first, last = _extent(t)
    base = torch.arange(last - first, dtype=torch.int64)
    shape = (*t.shape, size)
    strides = (*(s * size for s in t.stride()), 1)
    return torch.as_strided(base, shape, strides, 0).reshape(-1) + (first - lo)


@dataclass
class DestinationPlan:
    """What a restore writes (``views``), what it leaves out (``skip``), what waits for ``finish``."""

    views: dict[str, Destination]
    skip: frozenset[str]
    tied: dict[str, tuple[str, ...]]  # restored name -> every name sharing its memory
    overlaps: list[_Overlap]

    @property
    def staged_names(self) -> frozenset[str]:
        return frozenset(m.name for o in self.overlaps for m in o.members)

    def caller_written(self, touched: set[str]) -> set[str]:
        """Caller tensors written, given the names a restore touched (staging is not the caller's)."""
        out: set[str] = set()
        for name in touched - self.staged_names:
            out.update(self.tied.get(name, (name,)))
        return out

    def check(self) -> list[list[torch.Tensor]]:
        """After every frame verified: the byte addresses of each overlapping group, all agreed on."""
        return [overlap.check() for overlap in self.overlaps]

    def write(self, checked: list[list[torch.Tensor]]) -> None:
        for overlap, addresses in zip(self.overlaps, checked, strict=True):
            overlap.write(addresses)


def plan_destinations(entries: Sequence[TensorEntry], tensors: Mapping[str, torch.Tensor]) -> DestinationPlan:
    """Check ``tensors`` against ``entries`` (names, dtypes, shapes, kinds) and plan the writes."""
    names = {e.name for e in entries}
    if names != set(tensors):
        missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise TensorMismatchError(
            f"destination tensors differ from the checkpoint: missing {missing[:5]}, extra {extra[:5]}"
        )
    by_name = {e.name: e for e in entries}
    for e in entries:
        check_shape(e, tensors[e.name])
    views: dict[str, Destination] = {}
    skip: set[str] = set()
    tied: dict[str, tuple[str, ...]] = {}
    overlaps: list[_Overlap] = []
    for group in _sharing_groups(entries, tensors):
        if len(group) == 1 and not _self_overlapping(group[0].tensor):
            views[group[0].name] = byte_view_or_sink(group[0].name, group[0].tensor)
        elif _same_view(group):
            first = group[0]
            for other in group[1:]:
                _require_equal_frames(by_name[first.name], by_name[other.name])
                skip.add(other.name)
            views[first.name] = byte_view_or_sink(first.name, first.tensor)
            tied[first.name] = tuple(m.name for m in group)
        else:
            overlap = _Overlap(group)
            for m in group:
                if m.tensor.is_conj() or m.tensor.is_neg():
                    raise TensorMismatchError(
                        f"destination {m.name!r} is a lazy conj/neg view sharing memory with another destination",
                        remedy="pass resolved tensors (tensor.resolve_conj().resolve_neg())",
                    )
                staged = torch.empty(m.tensor.shape, dtype=m.tensor.dtype)
                overlap.staged[m.name] = staged
                views[m.name] = byte_view_or_sink(m.name, staged)
            overlaps.append(overlap)
    for name in skip:  # tied names still get a (never used) entry so the name set matches the manifest
        views[name] = views[next(k for k, v in tied.items() if name in v)]
    return DestinationPlan(views, frozenset(skip), tied, overlaps)


def check_shape(entry: TensorEntry, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TensorMismatchError(f"destination for {entry.name!r} is {a_or_an(type(t).__name__)}, not a torch.Tensor")
    check_strided(entry.name, t, TensorMismatchError)
    if t.dtype != torch_dtype(entry.dtype) or tuple(t.shape) != entry.shape:
        raise TensorMismatchError(
            f"tensor {entry.name!r}: checkpoint has {entry.dtype}{list(entry.shape)}, "
            f"destination is {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        )


def _sharing_groups(entries: Sequence[TensorEntry], tensors: Mapping[str, torch.Tensor]) -> list[list[_Member]]:
    """Destinations grouped so that members of different groups never share a byte."""
    by_storage: dict[tuple[str, int], list[_Member]] = {}
    groups: list[list[_Member]] = []
    for e in entries:
        t = tensors[e.name]
        lo, hi = _extent(t)
        member = _Member(e.name, t, lo, hi)
        if hi == lo:
            groups.append([member])
            continue
        key = (str(t.device), t.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append(member)
    for members in by_storage.values():
        members.sort(key=lambda m: (m.lo, m.name))
        current: list[_Member] = []
        reach = -1
        for m in members:
            if current and m.lo >= reach:
                groups.append(current)
                current, reach = [], -1
            current.append(m)
            reach = max(reach, m.hi)
        if current:
            groups.append(current)
    return groups


def _self_overlapping(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (an undecidable layout counts as yes: it is staged)."""
    if t.numel() <= 1 or t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return False
    lo, hi = _extent(t)
    if hi - lo < t.numel() * t.element_size():
        return True
    return bool(torch._debug_has_internal_overlap(t))


def _same_view(group: list[_Member]) -> bool:
    t0 = group[0].tensor
    key = (t0.data_ptr(), t0.dtype, tuple(t0.shape), t0.stride(), t0.is_conj(), t0.is_neg())
    return not _self_overlapping(t0) and all(
        (m.tensor.data_ptr(), m.tensor.dtype, tuple(m.tensor.shape), m.tensor.stride(), m.tensor.is_conj(),
         m.tensor.is_neg()) == key
        for m in group[1:]
    )  # fmt: skip


def _require_equal_frames(a: TensorEntry, b: TensorEntry) -> None:
    """Tied destinations: the checkpoint's bytes for both must be equal (compared by raw SHA-256)."""
    if [(f.raw_digest, f.raw_size) for f in a.frames] != [(f.raw_digest, f.raw_size) for f in b.frames]:
        raise AliasingConflictError(
            f"destinations {a.name!r} and {b.name!r} are one tensor (tied weights), but the checkpoint holds "
            "different values for them"
        )


def restore_into_tensors(
    storage: Storage,
    opened: OpenCheckpoint,
    tensors: Mapping[str, torch.Tensor],
    *,
    deep: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    written: set[str] | None = None,
) -> RestoreStats:
    """Verified restore of ``opened`` into caller tensors of any layout (see the module docs).

    ``written`` receives the name of every caller tensor whose memory the restore wrote,
    fully or partly, also when it raises (an aliasing conflict raises before writing anything).
    """
    plan = plan_destinations(opened.verified.manifest.tensors, tensors)
    touched: set[str] = set()
    try:
        stats = restore_into(
            storage, opened, plan.views, deep=deep, workers=workers, progress=progress, skip=plan.skip, written=touched
        )
        checked = plan.check()  # every shared byte agreed on, before the caller's memory is written
        if written is not None:
            written |= plan.staged_names
        plan.write(checked)
    finally:
        if written is not None:
            written |= plan.caller_written(touched)
    return stats


__all__ = [
    "DestinationPlan",
    "TensorSink",
    "byte_view_or_sink",
    "copy_range",
    "plan_destinations",
    "restore_into_tensors",
]
