"""Turning one tensor's frames into stored frames: reuse, delta, or full — decided per frame.

Owns: ``TensorSource`` (what a commit consumes), the per-frame decision and the parallel
encoding of a whole checkpoint. Does not own writing files or the commit order (``commit``).

Per frame, in order of preference (docs/design.md §4.4). (1) and (2) need the parent's
frames, each verified in this commit; when one is damaged the frame falls through to (3),
so a rotten parent never makes a commit fail:
1. *Reuse*: a parent frame with the same raw SHA-256 (and a codec that fits this dtype) is
   referenced as-is; nothing is compressed or written.
2. *Delta*: if the parent has a frame at the same position with the same size and its chain
   is shorter than ``max_delta_depth``, encode ``raw XOR parent_raw`` (byte-grouped, zstd).
   It is taken outright when it is at most 1/8 of the raw size, else only if smaller than (3).
3. *Full*: byte-grouped zstd (``compact``), or raw bytes if that is not smaller / ``fast``.

Codecs (docs/performance.md): ``compact`` full frames are ``bgN+zstd-lit`` (bf16: ratio 1.49,
CPU decode 1.7 GB/s per core); with ``exponent_grouping`` (chosen for devices that decode on
the GPU, where undoing the rotation is free) ``egN+zstd-lit`` (bf16: 1.51). Delta frames are
``xor+bgN+zstd-lit``. A store whose ``zstd_level`` is not 1 uses ``zstd-L`` instead of
``zstd-lit`` everywhere.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from appliance.codec.frames import Scratch, decode_into, encode, encode_against_payload, payload_into, same_layout
from appliance.codec.transform import U8
from appliance.crypto import FrameCipher
from appliance.errors import ApplianceError, FrameMissingError, ManifestError, StorageError, UsageError
from appliance.format.codec_name import IDENTITY, LIT_LEVEL, CodecSpec
from appliance.format.digest import Digest
from appliance.format.dtypes import DType, dtype_named
from appliance.format.manifest import FrameRef, Manifest, TensorEntry
from appliance.format.plan import frame_spans
from appliance.format.validate import check_shape, check_tensor_bytes, validate_tensor_name
from appliance.store.lastcommit import Position, Remembered, same_bytes
from appliance.store.sealed import open_frame, raw_identity, seal_encoded
from appliance.store.slot import SlotReader

DELTA_ACCEPT_FRACTION = 1 / 8


@dataclass(frozen=True)
class TensorSource:
    """One tensor to commit; ``load`` returns its bytes as a 1-D uint8 array (C order).

    ``recheck`` (sources read from files) raises ``SourceChangedError`` if the source changed
    since it was opened; the commit calls it after the last frame is durable, before the bundle.
    ``load_into`` (optional) reads the same bytes into a caller's buffer of exactly that size.
    ``raw_digests`` (optional): SHA-256 (hex) of (offset, size) spans of exactly the bytes ``load``
    returns, computed by the caller over that same private memory (the watchdog's content check,
    ``sources.export``); a frame with exactly such a span takes it as its raw digest instead of
    hashing the bytes again. Only for bytes nobody can change between that hash and the commit.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    load: Callable[[], U8]
    recheck: Callable[[], None] | None = None
    load_into: Callable[[U8], None] | None = None
    raw_digests: Mapping[tuple[int, int], str] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class EncodeOptions:
    policy: str  # "fast" | "compact"
    frame_size: int
    zstd_level: int = 1
    max_delta_depth: int = 8
    full: bool = False  # compaction: every frame stored without a delta chain
    exponent_grouping: bool = False  # egN instead of bgN for full float frames (GPU decoders)

    def zstd_spec(self, planes: int, *, xor: bool = False, exponent: bool = False) -> CodecSpec:
        """The compressed codec for a frame; level 1 means the ``zstd-lit`` parameter set."""
        literals = self.zstd_level == LIT_LEVEL
        return CodecSpec(xor=xor, planes=planes, level=self.zstd_level, exponent=exponent, literals=literals)


@dataclass(frozen=True)
class EncodedFrame:
    ref: FrameRef
    stored: bytes | bytearray | None  # bytes to write into the target slot, None if already there
    kind: str  # "reused" | "delta" | "full"
    extra: tuple[tuple[FrameRef, bytes], ...] = ()  # chain frames copied into the target slot


class FrameSupply:
    """Parent frames for the new checkpoint, from the target slot or copied from the parent's.

    Every frame handed out was hashed in this commit. A frame already valid in the target
    slot is used in place; otherwise its verified bytes from the parent's slot are returned
    for writing to every caller that needs it: an encoder may discard the frame it obtained them
    for (a delta that loses to a full frame), so no caller may rely on another one writing a
    copy; the commit's frame placer writes each digest once.
    """

    def __init__(self, target: SlotReader, source: SlotReader | None, index: Mapping[Digest, FrameRef]) -> None:
        self.target = target
        self.source = source
        self.index = index

    def chain(self, ref: FrameRef) -> list[FrameRef]:
        """``ref`` and its delta bases, deepest base first."""
        out = [ref]
        while (base := out[-1].base) is not None:
            out.append(self.index[base])
        return out[::-1]

    def obtain(self, ref: FrameRef) -> tuple[bytes, bool]:
        """Verified stored bytes of ``ref`` and whether this caller must write them."""
        if self.target.frame_size(ref.digest) == ref.size:
            try:
                return bytes(self.target.read_frame(ref)), False
            except (ApplianceError, StorageError):
                pass  # a rotten copy in the target slot is replaced by a verified one
        if self.source is None or self.source.slot == self.target.slot:
            raise FrameMissingError(f"frame {ref.digest.short()} has no verified copy")
        return bytes(self.source.read_frame(ref)), True


class FrameEncoder:
    """Per-frame decisions of one commit; with a ``cipher`` every stored frame is sealed (§14).

    Under a cipher, raw identities are keyed digests and every new frame's encoded bytes are
    sealed after encoding (the size comparisons between codecs use the encoded sizes, which
    sealing grows by the same 28 bytes). The parent must be sealed under the same data key
    (``appliance.format.crypto.may_share_frames``); the commit passes no parent otherwise.

    ``remembered`` (``lastcommit``): the parent's raw frames as the process that committed it into
    the target slot kept them. Then an unchanged frame is found by comparing bytes (no hashing),
    parent frames are known present in the target slot (no reads), and deltas XOR against the
    remembered raw bytes (no decoding of the chain); the frames chosen are the same.
    """

    def __init__(
        self,
        options: EncodeOptions,
        parent: Manifest | None,
        supply: FrameSupply | None,
        cipher: FrameCipher | None = None,
        remembered: Mapping[Position, Remembered] | None = None,
    ) -> None:
        self.options = options
        self.supply = supply
        self.cipher = cipher
        self.remembered = remembered if supply is not None else None
        self.by_raw: dict[tuple[Digest, int], FrameRef] = {}
        self.by_position: dict[tuple[str, int], FrameRef] = {}
        if parent is not None:
            for key, frames in parent.content_frames():  # tensors and assets (asset keys cannot be names)
                for i, f in enumerate(frames):
                    self.by_raw.setdefault((f.raw_digest, f.raw_size), f)
                    self.by_position[(key, i)] = f
        # Stored digest -> the one frame record it names in this manifest. Equal stored bytes can
        # mean different frames (one XOR payload on two bases), so a frame whose digest is taken
        # by another record falls back to a plainer encoding instead of aliasing it.
        self._records: dict[Digest, FrameRef] = dict(parent.frame_index()) if parent is not None else {}
        self._records_lock = threading.Lock()
        self._local = threading.local()

    def _scratch(self) -> Scratch:
        s: Scratch | None = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = Scratch()
        return s

    def full_spec(self, dtype: DType) -> CodecSpec:
        if self.options.policy == "fast":
            return IDENTITY
        exponent = self.options.exponent_grouping and dtype.kind == "float" and dtype.planes in (2, 4, 8)
        return self.options.zstd_spec(dtype.planes, exponent=exponent)

    def encode_frame(self, name: str, index: int, dtype: DType, raw: U8, known: str | None = None) -> EncodedFrame:
        """Reuse, delta or full; a damaged parent frame only costs the optimisation.

        ``known``: the SHA-256 (hex) of exactly ``raw``, computed by the caller over this same private
        memory (``TensorSource.raw_digests``); used as the raw digest of a plain store's frame.
        """
        unchanged = self._unchanged(name, index, dtype, raw)
        if unchanged is not None:
            return unchanged
        snapshot = raw.tobytes() if self.options.policy == "fast" else None  # hashed once, stored as is
        if snapshot is not None:
            raw = np.frombuffer(snapshot, np.uint8)
        raw_digest = Digest(known) if known is not None and self.cipher is None else raw_identity(self.cipher, raw.data)
        reused = self._reuse(raw_digest, raw.size, dtype)
        if reused is not None:
            return reused
        delta = self._delta(name, index, dtype, raw, raw_digest)
        if delta is not None and delta.ref.size <= raw.size * DELTA_ACCEPT_FRACTION and self._claim(delta):
            return delta
        full = self._full(dtype, raw, raw_digest, snapshot)
        if delta is not None and delta.ref.size < full.ref.size and self._claim(delta):
            return delta
        if self._claim(full):
            return full
        plain = self._sealed(raw_digest, raw.size, IDENTITY, raw.tobytes(), "full")
        if self._claim(plain):
            return plain
        raise ManifestError(
            f"frame {index} of tensor {name!r} stores bytes that another frame of this checkpoint names"
        )

    def _claim(self, encoded: EncodedFrame) -> bool:
        """Reserve ``encoded``'s stored digest for its record; ``False`` if another record holds it."""
        with self._records_lock:
            return self._records.setdefault(encoded.ref.digest, encoded.ref) == encoded.ref

    def _unchanged(self, name: str, index: int, dtype: DType, raw: U8) -> EncodedFrame | None:
        """The remembered parent frame at this position if its raw bytes equal ``raw`` (found before hashing)."""
        known = self.remembered.get((name, index)) if self.remembered is not None else None
        if known is None or known.dtype != dtype.name or not self._reusable(known.ref, dtype):
            return None
        return EncodedFrame(known.ref, None, "reused") if same_bytes(raw, known.raw) else None

    def _reusable(self, ref: FrameRef, dtype: DType) -> bool:
        if ref.codec.planes not in (0, dtype.planes):
            return False
        # Compaction re-encodes anything not written the way this policy writes a full frame;
        # "fast" never reuses compressed frames (its point is zero-decode restores).
        if self.options.full and ref.codec != self.full_spec(dtype):
            return False
        return not (self.options.policy == "fast" and ref.codec != IDENTITY)

    def _obtain_chain(self, ref: FrameRef) -> list[tuple[FrameRef, bytes, bool]] | None:
        if self.supply is None:
            return None
        supply = self.supply
        if self.remembered is not None:  # committed into the target slot by this process: present, verified then
            return [(f, b"", False) for f in supply.chain(ref)]
        try:
            return [(f, *supply.obtain(f)) for f in supply.chain(ref)]
        except (ApplianceError, StorageError):
            return None

    def _reuse(self, raw_digest: Digest, size: int, dtype: DType) -> EncodedFrame | None:
        ref = self.by_raw.get((raw_digest, size))
        if ref is None or not self._reusable(ref, dtype):
            return None
        chain = self._obtain_chain(ref)
        if chain is None:
            return None
        *bases, (_, data, write) = chain
        extra = tuple((f, d) for f, d, w in bases if w)
        return EncodedFrame(ref, data if write else None, "reused", extra)

    def _delta(self, name: str, index: int, dtype: DType, raw: U8, raw_digest: Digest) -> EncodedFrame | None:
        opts = self.options
        base = self.by_position.get((name, index))
        if opts.full or opts.policy != "compact" or base is None:
            return None
        if (
            base.raw_size != raw.size
            or base.depth >= opts.max_delta_depth
            or base.codec.planes not in (0, dtype.planes)
        ):
            return None
        known = self.remembered.get((name, index)) if self.remembered is not None else None
        if known is not None and known.ref == base and self.supply is not None:
            encoded, spec = self._delta_from_raw(raw, dtype, self.supply.chain(base), known.raw)
            return self._sealed(raw_digest, raw.size, spec, encoded, "delta", base=base)
        chain = self._obtain_chain(base)
        if chain is None or self.remembered is not None:
            return None
        encoded, spec = self._delta_bytes(raw, dtype, [(f, d) for f, d, _ in chain])
        extra = tuple((f, d) for f, d, w in chain if w)
        return self._sealed(raw_digest, raw.size, spec, encoded, "delta", base=base, extra=extra)

    def _sealed(
        self,
        raw_digest: Digest,
        raw_size: int,
        spec: CodecSpec,
        encoded: bytes,
        kind: str,
        *,
        base: FrameRef | None = None,
        extra: tuple[tuple[FrameRef, bytes], ...] = (),
    ) -> EncodedFrame:
        """The frame record and stored bytes of ``encoded`` (sealed under the cipher, if any)."""
        depth = base.depth + 1 if base is not None else 0
        base_digest = base.digest if base is not None else None
        draft = FrameRef(raw_digest, len(encoded), raw_digest, raw_size, spec, base_digest, depth)
        stored = seal_encoded(self.cipher, draft, encoded)
        ref = FrameRef(Digest.of(stored), len(stored), raw_digest, raw_size, spec, base_digest, depth)
        return EncodedFrame(ref, stored, kind, extra)

    def _opened(self, frame: FrameRef, stored: bytes) -> bytes | memoryview:
        """A chain frame's encoded bytes (its stored bytes, opened when sealed)."""
        return stored if self.cipher is None else open_frame(self.cipher, frame, stored, self._scratch())

    def _delta_bytes(self, raw: U8, dtype: DType, chain: list[tuple[FrameRef, bytes]]) -> tuple[bytes, CodecSpec]:
        """The delta of ``raw`` against the raw bytes ``chain`` (deepest base first) decodes to.

        When every chain frame groups bytes like the new delta will, the parent is rebuilt as
        the XOR of the chain's payloads and never un-grouped (one zstd decode and one XOR per
        level); otherwise it is decoded to raw bytes first.
        """
        scratch, layout = self._scratch(), chain[0][0].codec
        if layout.planes == dtype.planes and all(same_layout(f.codec, layout) for f, _ in chain):
            spec = self.options.zstd_spec(dtype.planes, xor=True, exponent=layout.exponent)
            parent = scratch.get("parent", raw.size)
            for level, (frame, data) in enumerate(chain):
                target = parent if level == 0 else scratch.get("payload", raw.size)
                payload_into(self._opened(frame, data), frame.codec, target)
                if level:
                    np.bitwise_xor(parent, target, out=parent)
            return encode_against_payload(raw, spec, parent, scratch), spec
        base_raw = scratch.get("base", raw.size)
        for frame, data in chain:  # each xor frame applies onto the one below
            decode_into(self._opened(frame, data), frame.codec, base_raw, scratch)
        spec = self.options.zstd_spec(dtype.planes, xor=True)
        return encode(raw, spec, base_raw, scratch), spec

    def _delta_from_raw(self, raw: U8, dtype: DType, chain: list[FrameRef], base_raw: U8) -> tuple[bytes, CodecSpec]:
        """The same encoded bytes as ``_delta_bytes`` when the parent's raw bytes are at hand: XOR,
        rotation and grouping are bit permutations, so XOR-ing payloads equals XOR-ing raw bytes."""
        layout = chain[0].codec
        same = layout.planes == dtype.planes and all(same_layout(f.codec, layout) for f in chain)
        spec = self.options.zstd_spec(dtype.planes, xor=True, exponent=same and layout.exponent)
        return encode(raw, spec, base_raw, self._scratch()), spec

    def _full(self, dtype: DType, raw: U8, raw_digest: Digest, snapshot: bytes | None) -> EncodedFrame:
        spec = self.full_spec(dtype)
        if spec == IDENTITY and snapshot is not None:  # the stored bytes are the hashed raw bytes
            if self.cipher is None:
                return EncodedFrame(FrameRef(raw_digest, len(snapshot), raw_digest, raw.size, spec), snapshot, "full")
            return self._sealed(raw_digest, raw.size, spec, snapshot, "full")
        encoded = encode(raw, spec, None, self._scratch())
        if spec != IDENTITY and len(encoded) >= raw.size:
            spec, encoded = IDENTITY, raw.tobytes()
        return self._sealed(raw_digest, raw.size, spec, encoded, "full")


@dataclass(frozen=True)
class FrameJob:
    tensor: int
    index: int
    name: str
    dtype: DType
    raw: U8
    known: str | None = None  # SHA-256 of ``raw`` from the source's ``raw_digests``, if it has this span


def check_source(src: TensorSource) -> tuple[str, DType, tuple[int, ...]]:
    """The reader's rules on one tensor's name, dtype and shape, refused as input errors."""
    name = validate_tensor_name(src.name, error=UsageError)
    try:
        dtype = dtype_named(src.dtype)
    except ApplianceError as exc:
        raise UsageError(f"tensor {name!r}: {exc.problem}") from exc
    check_shape(name, list(src.shape), UsageError)
    shape = tuple(int(d) for d in src.shape)
    check_tensor_bytes(name, math.prod(shape) * dtype.itemsize, UsageError)
    return name, dtype, shape


def tensor_jobs(
    sources: Iterable[TensorSource],
    frame_size: int,
    entries: list[tuple[str, str, tuple[int, ...]]],
) -> Iterator[FrameJob]:
    """Validate each source and cut it into frame jobs; loads one tensor at a time."""
    seen: set[str] = set()
    for ti, src in enumerate(sources):
        name, dtype, shape = check_source(src)
        if name in seen:
            raise UsageError(f"tensor name {name!r} appears twice")
        seen.add(name)
        entries.append((name, dtype.name, shape))
        nbytes = TensorEntry(name, dtype.name, shape, ()).nbytes
        data = src.load()
        if data.size != nbytes:
            raise UsageError(f"tensor {name!r} provides {data.size} bytes, its dtype and shape need {nbytes}")
        known = src.raw_digests or {}
        for fi, (off, size) in enumerate(frame_spans(nbytes, dtype.itemsize, frame_size)):
            yield FrameJob(ti, fi, name, dtype, data[off : off + size], known.get((off, size)))


def encode_all(
    encoder: FrameEncoder, jobs: Iterator[FrameJob], workers: int | None = None
) -> Iterator[tuple[FrameJob, EncodedFrame]]:
    """Encode jobs on a thread pool with a bounded window; yields in submission order."""
    n = max(1, workers or os.cpu_count() or 1)
    window: list[tuple[FrameJob, Future[EncodedFrame]]] = []
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="encode") as pool:
        for job in jobs:
            window.append((job, pool.submit(encoder.encode_frame, job.name, job.index, job.dtype, job.raw, job.known)))
            if len(window) >= 2 * n:
                first, fut = window.pop(0)
                yield first, fut.result()
        for job, fut in window:
            yield job, fut.result()
