"""Assets in the store: a model directory's non-tensor files, stored as frames, read back verified.

Owns: ``AssetSource`` (what a commit consumes for one file), ``DirectoryParts`` (everything a
model-directory commit records besides tensors), cutting assets into frame jobs while hashing
each whole file, building the manifest's ``AssetEntry`` records, and reading an asset back
with every frame's stored SHA-256, raw SHA-256 and the whole file's SHA-256 checked.
Does not own walking a directory (``appliance.sources.model_dir``) or the commit order.

An asset is encoded exactly like a ``uint8`` tensor's bytes (full frames, or a parent frame
reused when its raw SHA-256 matches, in either slot's generations), so an unchanged
``tokenizer.json`` costs nothing in a later generation, and GC, verify and scrub see asset
frames like any other through ``Manifest.all_frames``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import numpy as np

from appliance.crypto import FrameCipher
from appliance.errors import AssetError, AssetIntegrityError, SourceChangedError
from appliance.format.digest import Digest
from appliance.format.directory import AssetEntry, ShardEntry, check_label
from appliance.format.dtypes import dtype_named
from appliance.format.frame import FrameRef
from appliance.format.manifest import asset_key
from appliance.format.plan import frame_spans
from appliance.limits import DEFAULT_LIMITS
from appliance.storage import Storage
from appliance.store.discovery import OpenCheckpoint
from appliance.store.encode import FrameJob
from appliance.store.keys import cipher_for
from appliance.store.reread import SignedShard
from appliance.store.restore import FrameDecoder
from appliance.store.sealed import raw_matches
from appliance.store.slot import SlotReader

_U8 = dtype_named("uint8")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def _file_hasher(cipher: FrameCipher | None, data: bytes = b"") -> _Hasher:
    """SHA-256 of a whole asset file, or its keyed digest when the checkpoint is sealed."""
    hasher: _Hasher = hashlib.sha256() if cipher is None else cipher.identity_hasher()
    hasher.update(data)
    return hasher


@dataclass(frozen=True)
class AssetSource:
    """One file to commit as an asset; ``reader`` opens its bytes for one sequential read.

    Read frame by frame with ordinary reads (never mapped: a file truncated while it is committed
    must give an error, not a SIGBUS); a size other than ``size`` is an ``AssetError``.
    """

    path: str
    size: int
    reader: Callable[[], BinaryIO]
    executable: bool = False
    recheck: Callable[[], None] | None = None  # ``SourceChangedError`` if the file is not the one listed


@dataclass(frozen=True)
class DirectoryParts:
    """What a model-directory commit records besides its tensors (format v2, §4.5)."""

    assets: tuple[AssetSource, ...] = ()
    shards: tuple[ShardEntry, ...] = ()
    index_metadata: Mapping[str, Any] = field(default_factory=dict)
    signed_sha256: Mapping[str, str] = field(default_factory=dict)  # a vendor's per-file digests (model.sig)
    signed_shards: tuple[SignedShard, ...] = ()  # shards read again whole against those digests (reread)


class AssetJobs:
    """Cuts assets into frame jobs (job.tensor = -1 - asset index) and hashes each whole file."""

    def __init__(self, assets: tuple[AssetSource, ...], frame_size: int, cipher: FrameCipher | None = None) -> None:
        for a in assets:
            check_label(a.path, "asset path")
            if a.size > DEFAULT_LIMITS.asset_max_bytes:
                raise AssetError(f"asset {a.path!r} is {a.size} bytes, above the {DEFAULT_LIMITS.asset_max_bytes} cap")
        total = sum(a.size for a in assets)
        if total > DEFAULT_LIMITS.assets_max_total_bytes:
            raise AssetError(f"assets total {total} bytes, above the cap of {DEFAULT_LIMITS.assets_max_total_bytes}")
        self.assets = assets
        self.frame_size = frame_size
        self.cipher = cipher  # sealed checkpoints record a keyed digest of each file (design §14.4)
        self.digests: dict[int, Digest] = {}
        self.signed: Mapping[str, str] = {}  # DirectoryParts.signed_sha256, set by the commit

    def jobs(self) -> Iterator[FrameJob]:
        for i, asset in enumerate(self.assets):
            hasher, plain = _file_hasher(self.cipher), hashlib.sha256()
            with asset.reader() as f:
                for fi, (_, size) in enumerate(frame_spans(asset.size, 1, self.frame_size)):
                    data = f.read(size)  # a private copy: what is hashed is what is stored
                    if len(data) != size:
                        raise SourceChangedError(f"asset {asset.path!r} shrank while it was committed")
                    hasher.update(data)
                    plain.update(data)
                    yield FrameJob(-1 - i, fi, asset_key(asset.path), _U8, np.frombuffer(data, dtype=np.uint8))
                if f.read(1):
                    raise SourceChangedError(f"asset {asset.path!r} grew while it was committed")
            if asset.recheck is not None:
                asset.recheck()  # rewritten in place at the same size: only its identity tells
                _second_read(asset, plain.hexdigest())  # written through a shared mapping: only its bytes tell
            self._check_signed(asset, plain.hexdigest())
            self.digests[i] = Digest(hasher.hexdigest())

    def _check_signed(self, asset: AssetSource, sha256: str) -> None:
        signed = self.signed.get(asset.path)
        if signed is not None and signed != sha256:
            raise SourceChangedError(
                f"asset {asset.path!r} as read is not the file its vendor signed (SHA-256 {sha256[:12]}, "
                f"model.sig says {signed[:12]}): it changed after the signature was verified"
            )

    def entries(self, frames: Mapping[int, list[FrameRef]]) -> tuple[AssetEntry, ...]:
        return tuple(
            AssetEntry(a.path, a.size, self.digests[i], tuple(frames.get(-1 - i, [])), a.executable)
            for i, a in enumerate(self.assets)
        )


def _second_read(asset: AssetSource, sha256: str) -> None:
    """``SourceChangedError`` unless the file now holds exactly the bytes the commit read.

    Writes through a shared memory map leave size, mtime and ctime as they were once a page is
    dirty, so the identity check cannot see them; assets are small (configs, tokenizers), so the
    commit reads each once more and compares (design §6.2.1).
    """
    again = hashlib.sha256()
    with asset.reader() as f:
        while chunk := f.read(1 << 20):
            again.update(chunk)
    if again.hexdigest() != sha256:
        raise SourceChangedError(f"asset {asset.path!r} changed while it was committed (a second read differs)")


def read_asset(storage: Storage, opened: OpenCheckpoint, asset: AssetEntry) -> bytes:
    """The asset's bytes: each frame's stored and raw SHA-256 checked, then the whole file's."""
    manifest = opened.verified.manifest
    cipher = cipher_for(storage, manifest.encryption)
    decoder = FrameDecoder(SlotReader(storage, opened.slot), manifest.frame_index(), cipher)
    out = np.empty(asset.size, dtype=np.uint8)
    offset = 0
    for frame in asset.frames:
        view = out[offset : offset + frame.raw_size]
        decoder.decode(frame, view)
        if not raw_matches(cipher, frame, view.data):
            raise AssetIntegrityError(f"asset {asset.path!r}: frame {frame.digest.short()} fails its raw digest")
        offset += frame.raw_size
    data = out.tobytes()
    if _file_hasher(cipher, data).hexdigest() != asset.digest.hex:
        raise AssetIntegrityError(f"asset {asset.path!r} does not match its signed SHA-256")
    return data


def read_assets(storage: Storage, opened: OpenCheckpoint) -> dict[str, bytes]:
    return {a.path: read_asset(storage, opened, a) for a in opened.verified.manifest.assets}
