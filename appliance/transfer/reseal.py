"""Import into an encrypted store: re-seal a plain checkpoint under this store's data key.

Owns: ``import_sealed`` — the import entry point for stores that seal their commits
(docs/design.md §14.10). A checkpoint sealed under a data key this store holds is imported as is
(``import_checkpoint``: ciphertext copied byte for byte). A plain checkpoint (a release-signed
factory image, an export of a plain store) is never copied as is: each frame is read from the
source with its SHA-256 checked, decoded in memory, its raw SHA-256 checked, and the tensors and
assets are committed as a new checkpoint sealed under this store's key and signed by ``keys``,
one generation above the source's, with the source's release-signed bundle as its lineage (a
device key may sign it). A checkpoint sealed under a key this store does not hold is refused
before anything is read (it could never be restored here).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np

from appliance.codec.frames import Scratch, decode_into
from appliance.errors import AssetIntegrityError, FrameError, UsageError, WrongKeyError
from appliance.format.manifest import FrameRef, Manifest
from appliance.format.portable import BlobRef
from appliance.signing import SigningKey
from appliance.store.assets import AssetSource, DirectoryParts
from appliance.store.encode import TensorSource
from appliance.store.keys import keys_for
from appliance.store.store import Store
from appliance.transfer.importer import ImportPlan, import_checkpoint, inspect_source
from appliance.transfer.source import LayoutReader, read_blob

Progress = Callable[[int], None]


class _SourceFrames:
    """Decodes frames of a plain checkpoint straight from the source layout, each verified twice."""

    def __init__(self, source: LayoutReader, manifest: Manifest) -> None:
        self.source = source
        self.index = manifest.frame_index()
        self.scratch = Scratch()

    def decode(self, frame: FrameRef, out: np.ndarray) -> None:
        if frame.base is not None:
            self.decode(self.index[frame.base], out)
        stored = read_blob(self.source, BlobRef("frame", frame.digest, frame.size))  # stored SHA-256 checked
        decode_into(stored, frame.codec, out, self.scratch)

    def raw(self, frames: Sequence[FrameRef], nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, np.uint8)
        offset = 0
        for frame in frames:
            view = out[offset : offset + frame.raw_size]
            self.decode(frame, view)
            if hashlib.sha256(view.data).hexdigest() != frame.raw_digest.hex:
                raise FrameError(
                    f"frame {frame.digest.short()} of the source decodes to bytes that fail its raw SHA-256"
                )
            offset += frame.raw_size
        return out


def _reader(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def _parts(frames: _SourceFrames, manifest: Manifest) -> tuple[list[TensorSource], DirectoryParts]:
    def loader(t: Any) -> Callable[[], np.ndarray]:
        return lambda: frames.raw(t.frames, t.nbytes)

    sources = [TensorSource(t.name, t.dtype, t.shape, loader(t)) for t in manifest.tensors]
    assets = []
    for a in manifest.assets:
        data = frames.raw(a.frames, a.size).tobytes()
        if hashlib.sha256(data).hexdigest() != a.digest.hex:
            raise AssetIntegrityError(f"asset {a.path!r} of the source does not match its signed SHA-256")
        assets.append(AssetSource(a.path, a.size, _reader(data), a.executable))
    return sources, DirectoryParts(tuple(assets), manifest.shards, manifest.index_metadata)


def import_sealed(
    store: Store,
    source: LayoutReader,
    keys: Sequence[SigningKey],
    *,
    generation: int | None = None,
    floor: int = 0,
    progress: Progress | None = None,
    plan: ImportPlan | None = None,
) -> dict[str, Any]:
    """Import into a store that seals its commits; ``keys`` sign a re-sealed copy of a plain checkpoint."""
    plan = plan or inspect_source(store, source, generation=generation, floor=floor)
    manifest = plan.verified.manifest
    if manifest.encryption is not None:
        if keys_for(store.storage).keyring().get(manifest.encryption.key_id) is None:
            raise WrongKeyError(
                f"generation {plan.generation} is sealed under data key {manifest.encryption.key_id[:12]}, which this "
                "store does not hold: exports carry ciphertext only",
                remedy="import a plain (release) export of it, or restore this node's own keyring; nothing was copied",
            )
        result = import_checkpoint(store, source, floor=floor, progress=progress, plan=plan)
        return {"mode": "copied (sealed under this store's key)", **result.to_dict()}
    if not keys:
        raise UsageError(
            "this store seals its commits: a plain checkpoint is re-sealed and re-signed on import",
            remedy="pass the node's signing key (--key KEYFILE); a device key signs it with the release as lineage",
        )
    sources, parts = _parts(_SourceFrames(source, manifest), manifest)
    assert plan.verified.authorization is not None
    commit, _ = store.commit(
        sources,
        keys,
        dict(manifest.metadata),
        policy=manifest.policy,
        full=True,
        floor=max(floor, manifest.generation + 1),
        progress=progress,
        directory=parts,
        provenance=manifest.provenance,
        allow_empty=not any(t.numel for t in manifest.tensors),
        lineage_base=(plan.bundle_bytes, plan.verified.authorization, manifest),
    )
    return {"mode": "re-sealed", "source_generation": plan.generation, **commit.to_dict()}
