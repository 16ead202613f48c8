"""Zero-copy placement: one anonymous region per tensor, with frame files mapped into it.

Owns: ``Region`` (a private, page-aligned anonymous mapping a tensor lives in); mapping a file
copy-on-write over part of a region (``MAP_PRIVATE | MAP_FIXED | MAP_POPULATE``: the tensor
shares the file's page-cache pages until it writes, and a write never reaches the file);
the *sealed file* rule; and the optional storage capabilities ``MappingStorage`` and
``PrefetchStorage``. Does not own which frames are mapped or how they are verified
(``appliance.store.zerocopy``), nor opening files safely (``LocalStorage`` does, then hands
the descriptor here).

Why a file must be *sealed* before it is shared (docs/performance.md, "zero-copy"): pages of a
private file mapping keep tracking the file until they are written, so bytes hashed now are
only the bytes used later if nobody can change the file. A frame file is sealed when it is a
regular file owned by root or by this process's user, not writable by group or others, and
carries no POSIX ACL. Whoever can still write it (root, our own uid) can also write this
process's memory (ptrace, /proc/PID/mem), so sharing its pages gives no one new power. Store
frames are never modified in place (they are created once and replaced only by rename, which
leaves a mapped inode untouched). Not covered: a device that returns different bytes when an
evicted page is read again; callers that need that guarantee use the private restore.

Linux only; Python's ``mmap`` cannot map at a fixed address, so ``mmap(2)`` is called
through ctypes for that one step. The region itself is a ``mmap.mmap`` object, so its
lifetime (and ``munmap`` of everything mapped into it) follows the Python object.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
from typing import Protocol, runtime_checkable

PAGE = mmap.PAGESIZE
_MAP_FIXED = 0x10  # same value on every Linux architecture this runs on (x86-64, aarch64)
_ACL_XATTR = "system.posix_acl_access"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value


def page_aligned(offset: int) -> bool:
    return offset % PAGE == 0


class Region:
    """``size`` bytes of private, writable, page-aligned memory; files can be mapped into it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.length = max(PAGE, -(-size // PAGE) * PAGE)
        self.memory = mmap.mmap(
            -1, self.length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        anchor = ctypes.c_char.from_buffer(self.memory)
        self.address = ctypes.addressof(anchor)
        del anchor  # releases the buffer export; the address stays valid while ``memory`` lives

    def view(self) -> memoryview:
        return memoryview(self.memory)[: self.size]

    def map_file(self, fd: int, offset: int, size: int) -> None:
        """Map the first ``size`` bytes of ``fd`` copy-on-write at ``offset``, pages populated.

        Mapped read-only with ``MAP_POPULATE`` (page-table entries for the page-cache pages,
        no copy), then made writable with ``mprotect``: a later write faults and copies
        only that page. Populating a writable private mapping would copy every page.
        """
        if not page_aligned(offset) or offset + size > self.length or size <= 0:
            raise ValueError(f"cannot map {size} bytes at offset {offset} of a {self.length}-byte region")
        address = self.address + offset
        flags = mmap.MAP_PRIVATE | _MAP_FIXED | mmap.MAP_POPULATE
        if _libc.mmap(address, size, mmap.PROT_READ, flags, fd, 0) == _MAP_FAILED:
            err = ctypes.get_errno()
            self._refill(offset, size)  # a failed MAP_FIXED may already have dropped the old pages
            raise OSError(err, os.strerror(err))
        if _libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            err = ctypes.get_errno()
            self._refill(offset, size)
            raise OSError(err, os.strerror(err))

    def _refill(self, offset: int, size: int) -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED
        if _libc.mmap(self.address + offset, size, prot, flags, -1, 0) == _MAP_FAILED:
            raise MemoryError("a zero-copy region lost pages and could not be repaired")


def unsealed_reason(fd: int, st: os.stat_result) -> str | None:
    """Why the open file ``fd`` may not be shared zero-copy, or ``None`` if it is sealed."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, neither root nor this process"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    with contextlib.suppress(OSError):
        if _ACL_XATTR in os.listxattr(fd):
            return "carries a POSIX ACL"
    return None


def advise_willneed(fd: int) -> None:
    """Ask the kernel to start reading the whole file into the page cache (asynchronous)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)


def advise_dontneed(fd: int) -> None:
    """Ask the kernel to drop the file's clean pages from the page cache."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def is_mapping_error(exc: OSError) -> bool:
    """Errors that mean "this file system cannot map": the caller copies instead."""
    return exc.errno in (errno.ENODEV, errno.EACCES, errno.EINVAL, errno.ENOMEM, errno.EPERM)


@runtime_checkable
class MappingStorage(Protocol):
    """Optional storage capability: map a file into a region (``LocalStorage`` has it)."""

    def map_into(self, path: str, region: Region, offset: int, size: int) -> str | None:
        """Map ``path`` (exactly ``size`` bytes) at ``offset``; ``None`` or why it was not mapped."""
        ...


@runtime_checkable
class PrefetchStorage(Protocol):
    """Optional storage capability: start reading a file ahead of its use."""

    def prefetch(self, path: str) -> None: ...
