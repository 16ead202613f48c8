"""Reading a portable layout from somewhere that can vanish or lie: a USB stick, an object store.

Owns: ``LayoutReader`` — the small read interface a source implements (``read``, ``read_into``,
``size``, ``listdir``; ``LocalStorage`` has it, the object-store reader in ``appliance.remote``
implements it too), listing the bundles a layout holds, and reading a bundle or a blob *verified*
(size cap, SHA-256 = the name). Every failure of the medium becomes ``SourceUnavailableError``
(69: reconnect and re-run), every wrong byte a typed integrity error; nothing read is ever
executed, unpickled or used as a path (names are parsed into ``Digest``/``BundleName`` first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from appliance.errors import (
    ApplianceError,
    FrameError,
    LimitExceededError,
    ManifestError,
    SourceUnavailableError,
    StorageError,
    UnsafePathError,
)
from appliance.format.digest import Digest
from appliance.format.portable import BUNDLES, BlobRef, BundleName, blob_key, parse_bundle_name
from appliance.limits import DEFAULT_LIMITS, Limits

T = TypeVar("T")


class LayoutReader(Protocol):
    """What import needs from a source: ``LocalStorage`` over a directory, or an object-store reader."""

    def read(self, path: str, max_size: int) -> bytes:
        """The whole file; ``FileNotFoundError`` if absent; ``LimitExceededError`` above ``max_size``."""
        ...

    def read_into(self, path: str, out: memoryview) -> int:
        """Read up to ``len(out)`` bytes; returns the file's size (which may differ: the caller checks)."""
        ...

    def size(self, path: str) -> int | None: ...

    def listdir(self, path: str) -> list[str] | None: ...


@contextmanager
def _medium(what: str) -> Iterator[None]:
    """Translate a failing medium into ``SourceUnavailableError``; integrity refusals pass through."""
    try:
        yield
    except (FileNotFoundError, UnsafePathError, LimitExceededError, SourceUnavailableError):
        raise
    except (StorageError, OSError) as exc:
        detail = exc.problem if isinstance(exc, ApplianceError) else str(exc)
        raise SourceUnavailableError(f"the source failed while reading {what}: {detail}") from exc


def guarded(what: str, fn: Callable[[], T]) -> T:
    with _medium(what):
        return fn()


def list_bundles(source: LayoutReader) -> list[BundleName]:
    """Every well-formed bundle name in the layout, newest generation first; junk names are ignored."""
    with _medium(BUNDLES + "/"):
        names = source.listdir(BUNDLES)
    found = [b for b in (parse_bundle_name(n) for n in names or []) if b is not None]
    return sorted(found, reverse=True)


def read_bundle(source: LayoutReader, name: BundleName, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The bundle's bytes, only if their SHA-256 is the one its name promises."""
    try:
        with _medium(name.key):
            data = source.read(name.key, limits.manifest_max_bytes)
    except FileNotFoundError as exc:
        raise ManifestError(f"{name.key} vanished from the source") from exc
    if Digest.of(data) != name.digest:
        raise ManifestError(f"{name.key} is not the bundle its name promises (altered, truncated or replaced)")
    return data


def read_blob(source: LayoutReader, blob: BlobRef, buf: bytearray | None = None) -> memoryview:
    """A blob's bytes, size- and SHA-256-checked as read, before anyone uses them."""
    key = blob_key(blob.digest)
    out = (
        memoryview(buf)[: blob.size] if buf is not None and len(buf) >= blob.size else memoryview(bytearray(blob.size))
    )
    try:
        with _medium(key):
            size = source.read_into(key, out)
    except FileNotFoundError as exc:  # present at the pre-flight check: the medium went away
        raise SourceUnavailableError(
            f"blob {blob.digest.short()} vanished from the source during the transfer (removed or unmounted?)"
        ) from exc
    if size != blob.size:
        raise FrameError(
            f"blob {blob.digest.short()} in the source has {size} bytes, expected {blob.size} (truncated?)"
        )
    if hashlib.sha256(out).hexdigest() != blob.digest.hex:
        raise FrameError(f"blob {blob.digest.short()} in the source fails its SHA-256 (bit-flipped or replaced)")
    return out


def missing_blobs(source: LayoutReader, blobs: list[BlobRef]) -> list[tuple[BlobRef, int | None]]:
    """Blobs the source lacks (size ``None``) or holds with the wrong size (a stat each, no bulk read)."""
    out = []
    for blob in blobs:
        key = blob_key(blob.digest)
        with _medium(key):
            size = source.size(key)
        if size != blob.size:
            out.append((blob, size))
    return out


def describe_missing(missing: list[tuple[BlobRef, int | None]], total: int) -> str:
    """What ``missing_blobs`` found, in words: absent blobs counted, a wrong size named with both sizes."""
    absent = [b for b, size in missing if size is None]
    wrong = [(b, size) for b, size in missing if size is not None]
    parts = []
    if absent:
        parts.append(f"lacks {len(absent)} of the {total} blobs (e.g. sha256:{absent[0].digest.hex})")
    if wrong:
        blob, size = wrong[0]
        what = "a blob" if len(wrong) == 1 else f"{len(wrong)} blobs"
        parts.append(
            f"holds {what} with the wrong size (e.g. sha256:{blob.digest.hex} has {size} bytes, the bundle says "
            f"{blob.size}: truncated or replaced)"
        )
    return " and ".join(parts)
