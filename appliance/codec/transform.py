"""Byte grouping: byte ``i`` of every element goes to plane ``i``.

Why: in bf16/fp16/fp32 weights the high byte (sign + exponent) is highly repetitive and the
low bytes are close to random. Grouping lets zstd compress the exponent plane and store the
mantissa plane as raw blocks (measured: bf16 zstd-1 ratio 1.28 -> 1.46, decode 1.8x faster).

Law: ``ungroup_into(group(x, n), out, n)`` leaves ``out == x`` for any ``len(x) % n == 0``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


def group(raw: U8, planes: int, out: U8 | None = None) -> U8:
    """Return the planes of ``raw`` back to back (plane 0 first)."""
    if planes <= 1:
        return raw
    out = np.empty(raw.size, np.uint8) if out is None else out[: raw.size]
    n = raw.size // planes
    src = raw.reshape(n, planes)
    for i in range(planes):
        out[i * n : (i + 1) * n] = src[:, i]
    return out


def ungroup_into(grouped: U8, out: U8, planes: int) -> None:
    """Inverse of ``group``: interleave the planes of ``grouped`` into ``out``."""
    if planes <= 1:
        out[:] = grouped
        return
    n = out.size // planes
    dst = out.reshape(n, planes)
    for i in range(planes):
        dst[:, i] = grouped[i * n : (i + 1) * n]
