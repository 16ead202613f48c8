"""``RecordingStorage``: the ``Storage`` protocol in memory, logging every step a crash can split.

Owns: an inode-model file system in memory (a directory maps names to inode numbers, so a
rename moves an inode, never data), ``LocalStorage``'s semantics for every call (exclusive
create, same-directory rename, ``FileNotFoundError`` for absent files, typed errors otherwise,
an optional capacity that raises ``StorageFullError``), the operation log, and ``apply`` — what
one logged operation does to an ``Image``. Does not own *which* crash states are built from a
log (the fault suites choose subsets and torn variants) or what any file means.

The log follows the crash model of ``appliance.storage.base``: ``write_new`` logs a ``Link``
(the new name, durable only after ``fsync_dir`` of its parent) and a ``Write`` (the data,
durable only after ``fsync`` of the file); ``rename``/``unlink``/``mkdir`` log directory
operations; ``fsync``/``fsync_dir`` log barriers. ``covering_barrier`` says which barrier makes
an operation durable. Reads are not logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from appliance.errors import LimitExceededError, StorageError, StorageFullError, UnsafePathError
from appliance.storage.base import split_path

ROOT_INODE = 0


@dataclass(frozen=True)
class Link:
    """A new name ``name`` in directory ``dir`` for ``inode`` (a new file or directory)."""

    dir: int
    name: str
    inode: int
    is_dir: bool = False


@dataclass(frozen=True)
class Write:
    """The whole content of a new file (files are written once, by ``write_new``)."""

    inode: int
    data: bytes


@dataclass(frozen=True)
class Rename:
    dir: int
    src: str
    dst: str
    inode: int


@dataclass(frozen=True)
class Unlink:
    dir: int
    name: str
    inode: int


@dataclass(frozen=True)
class Fsync:
    inode: int


@dataclass(frozen=True)
class FsyncDir:
    inode: int


Op = Link | Write | Rename | Unlink | Fsync | FsyncDir


def covering_barrier(op: Op) -> Op | None:
    """The barrier that makes ``op`` durable (``None`` for barriers themselves)."""
    if isinstance(op, Write):
        return Fsync(op.inode)
    if isinstance(op, (Link, Rename, Unlink)):
        return FsyncDir(op.dir)
    return None


@dataclass
class Image:
    """A file-system state: directories (inode -> entries) and files (inode -> bytes)."""

    dirs: dict[int, dict[str, int]] = field(default_factory=lambda: {ROOT_INODE: {}})
    files: dict[int, bytes] = field(default_factory=dict)
    next_inode: int = ROOT_INODE + 1

    def copy(self) -> Image:
        return Image({d: dict(e) for d, e in self.dirs.items()}, dict(self.files), self.next_inode)

    def reachable(self) -> dict[str, bytes | None]:
        """Every path reachable from the root: file bytes, or ``None`` for a directory."""
        out: dict[str, bytes | None] = {}
        pending = [("", ROOT_INODE)]
        while pending:
            prefix, inode = pending.pop()
            for name, child in self.dirs.get(inode, {}).items():
                path = f"{prefix}/{name}" if prefix else name
                if child in self.dirs:
                    out[path] = None
                    pending.append((path, child))
                else:
                    out[path] = self.files.get(child, b"")
        return out

    def fingerprint(self) -> int:
        """Equal for images with the same reachable tree (used to skip duplicate crash states)."""
        return hash(frozenset(self.reachable().items()))


def apply(image: Image, op: Op) -> None:
    """Apply one logged operation to ``image`` in place; barriers change nothing.

    Tolerates operations whose predecessors were dropped by a crash: a ``Link`` into a
    directory whose own entry was lost leaves an unreachable orphan; a ``Rename`` or
    ``Unlink`` only removes the source name if it still names the recorded inode.
    """
    # Every inode an operation names is taken, even when the Link that created it was lost:
    # a later allocation must never reuse it (a lost Link + kept Write + kept Rename is legal).
    image.next_inode = max(image.next_inode, op.inode + 1, getattr(op, "dir", 0) + 1)
    if isinstance(op, Link):
        if op.is_dir:
            image.dirs.setdefault(op.inode, {})
        image.dirs.setdefault(op.dir, {})[op.name] = op.inode
    elif isinstance(op, Write):
        image.files[op.inode] = op.data
    elif isinstance(op, Rename):
        entries = image.dirs.setdefault(op.dir, {})
        if entries.get(op.src) == op.inode:
            del entries[op.src]
        entries[op.dst] = op.inode
    elif isinstance(op, Unlink):
        entries = image.dirs.setdefault(op.dir, {})
        if entries.get(op.name) == op.inode:
            del entries[op.name]


class RecordingStorage:
    """In-memory ``Storage`` over an ``Image``; every mutation is applied and logged in ``ops``."""

    def __init__(self, image: Image | None = None, *, capacity: int | None = None) -> None:
        self.live = image.copy() if image is not None else Image()
        self.ops: list[Op] = []
        self.capacity = capacity
        self.hook: Callable[[str, str], None] | None = None  # (action, path) before each mutation

    def __repr__(self) -> str:
        return f"RecordingStorage({len(self.live.files)} files, {len(self.ops)} ops logged)"

    def image(self) -> Image:
        """The current state as if every logged operation were durable."""
        return self.live.copy()

    def _log(self, op: Op) -> None:
        apply(self.live, op)
        self.ops.append(op)

    def _before(self, action: str, path: str) -> None:
        if self.hook is not None:
            self.hook(action, path)

    # --- resolution ------------------------------------------------------------------------

    def _lookup(self, parts: list[str], path: str) -> int:
        inode = ROOT_INODE
        for part in parts:
            if inode not in self.live.dirs:
                raise UnsafePathError(f"refused to open {path}: a non-directory is in the path")
            child = self.live.dirs[inode].get(part)
            if child is None:
                raise FileNotFoundError(path)
            inode = child
        return inode

    def _dir(self, path: str) -> int:
        inode = self._lookup(split_path(path), path)
        if inode not in self.live.dirs:
            raise UnsafePathError(f"refused to open {path}: not a directory")
        return inode

    def _parent(self, path: str) -> tuple[int, str]:
        *dirs, name = split_path(path)
        return self._dir("/".join(dirs)), name

    def _file(self, path: str) -> int:
        inode = self._lookup(split_path(path), path)
        if inode in self.live.dirs:
            raise UnsafePathError(f"{path} is not a regular file")
        return inode

    # --- reads -----------------------------------------------------------------------------

    def read(self, path: str, max_size: int) -> bytes:
        data = self.live.files.get(self._file(path), b"")
        if len(data) > max_size:
            raise LimitExceededError(f"{path} is {len(data)} bytes, above the cap of {max_size}")
        return data

    def read_into(self, path: str, out: memoryview) -> int:
        data = self.live.files.get(self._file(path), b"")
        n = min(len(data), len(out))
        out[:n] = data[:n]
        return len(data)

    def size(self, path: str) -> int | None:
        try:
            return len(self.live.files.get(self._file(path), b""))
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(self.live.dirs[self._dir(path)])
        except FileNotFoundError:
            return None

    def used_bytes(self) -> int:
        return sum(len(v) for v in self.live.reachable().values() if v is not None)

    def free_bytes(self, path: str) -> int:
        self._dir(path)
        return (1 << 50) if self.capacity is None else max(0, self.capacity - self.used_bytes())

    # --- writes ----------------------------------------------------------------------------

    def write_new(self, path: str, data: bytes | memoryview) -> None:
        self._before("create", path)
        parent, name = self._parent(path)
        if name in self.live.dirs[parent]:
            raise StorageError(f"cannot create {path}: File exists")
        payload = bytes(data)
        if self.capacity is not None and self.used_bytes() + len(payload) > self.capacity:
            raise StorageFullError(f"no space left to write {path}")
        inode = self.live.next_inode
        self._log(Link(parent, name, inode))
        self._log(Write(inode, payload))

    def fsync(self, path: str) -> None:
        self._before("fsync", path)
        self._log(Fsync(self._file(path)))

    def fsync_dir(self, path: str) -> None:
        self._before("fsync directory", path)
        self._log(FsyncDir(self._dir(path)))

    def rename(self, src: str, dst: str) -> None:
        self._before("rename", dst)
        parent, sname = self._parent(src)
        dparent, dname = self._parent(dst)
        if parent != dparent:
            raise ValueError("rename must stay within one directory")
        inode = self.live.dirs[parent].get(sname)
        if inode is None:
            raise FileNotFoundError(src)
        if self.live.dirs[parent].get(dname) in self.live.dirs:
            raise StorageError(f"cannot rename {dst}: Is a directory")
        self._log(Rename(parent, sname, dname, inode))

    def unlink(self, path: str) -> None:
        self._before("remove", path)
        parent, name = self._parent(path)
        inode = self.live.dirs[parent].get(name)
        if inode is None:
            raise FileNotFoundError(path)
        if inode in self.live.dirs:
            raise StorageError(f"cannot remove {path}: Is a directory")
        self._log(Unlink(parent, name, inode))

    def mkdir(self, path: str) -> None:
        self._before("create directory", path)
        parent, name = self._parent(path)
        if name in self.live.dirs[parent]:
            raise StorageError(f"cannot create directory {path}: File exists")
        self._log(Link(parent, name, self.live.next_inode, is_dir=True))

    # --- test conveniences (not part of the protocol) --------------------------------------

    def files(self) -> Mapping[str, bytes | None]:
        return self.live.reachable()

    def walk(self) -> Iterator[str]:
        yield from sorted(p for p, v in self.live.reachable().items() if v is not None)
