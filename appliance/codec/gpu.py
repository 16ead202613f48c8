"""nvCOMP decoding of stored zstd frames on a CUDA device, import-guarded with a CPU fallback.

Owns: whether nvCOMP (``nvidia-nvcomp-cu12`` 6.x) and a CUDA device are usable here
(``available()``: a yes/no with the reason), the batch layout nvCOMP needs (offsets aligned to
``ALIGNMENT``), and ``NvcompBatchDecoder``: one ``Codec(algorithm="Zstd",
bitstream_kind=RAW)`` per thread that decodes many frames laid out in one device buffer into
their places in one device output buffer, in a single ``decode`` call. ``CpuBatchDecoder`` has
the same interface on host memory (libzstd); it is what tests and GPU-less machines use.

Does not own: verifying hashes (nvCOMP "can only operate on valid input data": callers verify
every stored frame's SHA-256 on the CPU *before* it reaches a decoder), undoing byte grouping
(``appliance.gpu.transforms``, torch ops) or choosing frames (``appliance.gpu.restore``).
Torch-free: device buffers are any objects with ``__cuda_array_interface__``; the CPU decoder
takes numpy arrays.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from appliance.codec import zstdframe
from appliance.codec.frames import MAX_WINDOW

ALIGNMENT = 16  # nvCOMP's documented conservative decompression alignment (bytes)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str


@functools.lru_cache(maxsize=1)
def available() -> Availability:
    """Can this process decode on a GPU? Never raises; the reason is logged once."""
    try:
        from nvidia import nvcomp
    except ImportError as exc:
        result = Availability(False, f"nvidia-nvcomp-cu12 is not installed ({exc.name})")
    else:
        try:
            nvcomp.Codec(algorithm="Zstd", bitstream_kind=nvcomp.BitstreamKind.RAW)
        except (RuntimeError, ValueError, OSError) as exc:
            result = Availability(False, f"nvCOMP found no usable CUDA device: {exc}")
        else:
            result = Availability(True, f"nvCOMP {getattr(nvcomp, '__version__', '?')} with a CUDA device")
    log.info("GPU decoding %s: %s", "available" if result.ok else "unavailable, the CPU decodes", result.reason)
    return result


def aligned_layout(sizes: Sequence[int], alignment: int = ALIGNMENT) -> tuple[list[int], int]:
    """Offsets that place ``sizes`` back to back, each start a multiple of ``alignment``."""
    offsets, position = [], 0
    for size in sizes:
        offsets.append(position)
        position += -(-size // alignment) * alignment
    return offsets, position


@dataclass(frozen=True)
class FrameBatch:
    """Where each frame of one decode call is (``src``) and goes (``dst``), in bytes."""

    src_offsets: tuple[int, ...]
    src_sizes: tuple[int, ...]
    dst_offsets: tuple[int, ...]
    dst_sizes: tuple[int, ...]


class BatchDecoder(Protocol):
    def decode(self, src: Any, dst: Any, batch: FrameBatch) -> None:
        """Decode frame ``i`` at ``src[src_offsets[i]:+src_sizes[i]]`` into ``dst[dst_offsets[i]:+dst_sizes[i]]``."""
        ...


class NvcompBatchDecoder:
    """One nvCOMP Zstd codec (RAW bitstreams), used by one thread, on one CUDA stream."""

    def __init__(self, cuda_stream: int = 0, device_id: int = 0) -> None:
        from nvidia import nvcomp

        self._nvcomp = nvcomp
        self.codec = nvcomp.Codec(
            algorithm="Zstd",
            bitstream_kind=nvcomp.BitstreamKind.RAW,
            device_id=device_id,
            cuda_stream=cuda_stream,
        )

    def decode(self, src: Any, dst: Any, batch: FrameBatch) -> None:
        nv = self._nvcomp
        sources = nv.as_arrays(src, list(batch.src_offsets), list(batch.src_sizes))
        outputs = nv.as_arrays(dst, list(batch.dst_offsets), list(batch.dst_sizes))
        self.codec.decode(sources, out=outputs)


class CpuBatchDecoder:
    """The same contract on host memory with libzstd (each frame checked as on the CPU path)."""

    def decode(self, src: Any, dst: Any, batch: FrameBatch) -> None:
        source, target = np.asarray(src), np.asarray(dst)
        for so, ss, do, ds in zip(batch.src_offsets, batch.src_sizes, batch.dst_offsets, batch.dst_sizes, strict=True):
            frame = source[so : so + ss].data
            zstdframe.check_frame(frame, ds, MAX_WINDOW)
            zstdframe.decompress_into(frame, target[do : do + ds].data)
