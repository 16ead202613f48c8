"""A second read of file-backed tensor sources, compared with the frames the commit made of them.

Owns: ``check_second_read``. The identity checks of ``appliance.sources.stable`` cannot see
writes through a shared memory map to pages that are already dirty (no size, mtime or ctime
change), so a commit *from files* (``appliance commit``, ``api.save_directory``; never the
watchdog's exports, whose outbox no other user can write) reads every tensor once more and
compares each frame's raw digest: a source written meanwhile is ``SourceChangedError`` (20),
never a checkpoint that mixes two versions of a shard (design §6.2.1). Cost: one more read and
hash of the tensors committed.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.crypto import FrameCipher
from appliance.errors import SourceChangedError
from appliance.format.digest import Digest
from appliance.format.manifest import Manifest
from appliance.store.encode import TensorSource


def check_second_read(sources: Iterable[TensorSource], manifest: Manifest, cipher: FrameCipher | None) -> None:
    """``SourceChangedError`` unless every file-backed tensor reads again as the frames committed."""
    by_name = {s.name: s for s in sources if s.recheck is not None}
    for entry in manifest.tensors:
        source = by_name.get(entry.name)
        if source is None:
            continue
        data = memoryview(source.load().data)
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
