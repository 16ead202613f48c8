"""A second read of file-backed tensor sources, compared with the frames the commit made of them.

Owns: ``check_second_read`` and ``SignedShard``. The identity checks of ``appliance.sources.stable`` cannot see
writes through a shared memory map to pages that are already dirty (no size, mtime or ctime
change), so a commit *from files* (``appliance commit``, ``api.save_directory``; never the
watchdog's exports, whose outbox no other user can write) reads every tensor once more and
compares each frame's raw digest: a source written meanwhile is ``SourceChangedError`` (20),
never a checkpoint that mixes two versions of a shard (design §6.2.1). Cost: one more read and
hash of the tensors committed.

A shard of a vendor-signed directory (``SignedShard``) is read again whole instead: the SHA-256 of
its header as the commit parsed it and of every byte after it, as read now, must equal the digest
``model.sig`` lists for the file, and the tensor bytes of that same read must equal the frames —
so the checkpoint holds exactly the bytes the vendor signed, however the file was written
(``SourceChangedError``, 20, as for an asset that is not the file its vendor signed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.codec.transform import U8
from appliance.crypto import FrameCipher
from appliance.errors import SourceChangedError
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest, TensorEntry
from appliance.store.encode import TensorSource

# reads a shard file again whole; hands each tensor's bytes (file order) to the callback; its SHA-256 hex
WholeFileRead = Callable[[Callable[[str, U8], None]], str]


@dataclass(frozen=True)
class SignedShard:
    """A shard file of a vendor-signed directory: its name, the SHA-256 ``model.sig`` lists, a whole read."""

    file: str
    sha256: str
    read: WholeFileRead


def check_second_read(
    sources: Iterable[TensorSource],
    manifest: Manifest,
    cipher: FrameCipher | None,
    signed: Iterable[SignedShard] = (),
) -> None:
    """``SourceChangedError`` unless every file-backed tensor reads again as the frames committed,
    and every signed shard, read again whole, is the file its vendor signed."""
    entries = {e.name: e for e in manifest.tensors}
    checked: set[str] = set()

    def compare(name: str, data: U8) -> None:
        entry = entries.get(name)
        if entry is not None:
            _compare(entry, memoryview(data.data), cipher)
            checked.add(name)

    for shard in signed:
        sha256 = shard.read(compare)
        if sha256 != shard.sha256:
            raise SourceChangedError(
                f"shard {shard.file!r} as committed is not the file its vendor signed (SHA-256 {sha256[:12]}, "
                f"model.sig says {shard.sha256[:12]}): it changed after the signature was verified "
                "(written through a shared mapping?)"
            )
    by_name = {s.name: s for s in sources if s.recheck is not None and s.name not in checked}
    for entry in manifest.tensors:
        source = by_name.get(entry.name)
        if source is not None:
            _compare(entry, memoryview(source.load().data), cipher)


def _compare(entry: TensorEntry, data: memoryview, cipher: FrameCipher | None) -> None:
    offset = 0
    for ref in entry.frames:
        chunk = data[offset : offset + ref.raw_size]
        digest = cipher.raw_digest(chunk) if cipher is not None else Digest.of(chunk)
        if digest != ref.raw_digest:
            raise SourceChangedError(
                f"tensor {entry.name!r} changed in its source file while it was committed "
                f"(a second read differs at byte {offset}; written through a shared mapping?)"
            )
        offset += ref.raw_size
