"""Encode and decode one frame under a ``CodecSpec``, into caller-owned memory.

Owns: the stage order ``raw -> [xor base] -> [rotate] -> [group planes] -> (zstd | id)`` and
its inverse.
Does not own: hashing (callers verify the stored digest *before* ``decode_into``), choosing a
codec (``appliance.store.encode``) or locating base frames.

Decoding writes straight into the destination slice (a tensor's own memory). For an ``xor``
frame the destination must already hold the base frame's raw bytes; the payload is XORed in.
Scratch memory per thread is bounded by one frame (``Scratch``).
"""

from __future__ import annotations

import numpy as np

from appliance.codec import transform, zstdframe
from appliance.codec.transform import U8
from appliance.errors import FrameError
from appliance.format.codec_name import CodecSpec
from appliance.limits import MiB

MAX_WINDOW = 64 * MiB


class Scratch:
    """Reusable per-thread buffers; grows to the largest frame seen, never shrinks."""

    def __init__(self) -> None:
        self._bufs: dict[str, U8] = {}

    def get(self, name: str, size: int) -> U8:
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1), np.uint8)
            self._bufs[name] = buf
        return buf[:size]


def encode(raw: U8, spec: CodecSpec, base_raw: U8 | None = None, scratch: Scratch | None = None) -> bytes:
    """Stored bytes of ``raw`` under ``spec``; ``base_raw`` is required for xor codecs."""
    scratch = scratch or Scratch()
    data = raw
    if spec.xor:
        if base_raw is None or base_raw.size != raw.size:
            raise ValueError("an xor codec needs a base frame of the same size")
        data = np.bitwise_xor(raw, base_raw, out=scratch.get("xor", raw.size))
    if spec.exponent:
        data = transform.rotate_left(data, spec.planes, scratch.get("rotated", raw.size), scratch.get("temp", raw.size))
    if spec.planes:
        data = transform.group(data, spec.planes, scratch.get("group", raw.size))
    if spec.compressed:
        return zstdframe.compress(data.data, spec.level, spec.literals)
    return data.tobytes()


def same_layout(a: CodecSpec, b: CodecSpec) -> bool:
    """Whether two codecs group (and rotate) bytes the same way, so their payloads XOR together."""
    return a.planes == b.planes and a.exponent == b.exponent


def payload_into(stored: bytes | memoryview, spec: CodecSpec, out: U8) -> None:
    """A frame's *payload*: its zstd stage undone, grouping / rotation / xor kept (checked as in ``decode_into``)."""
    if spec.compressed:
        zstdframe.check_frame(stored, out.size, MAX_WINDOW)
        zstdframe.decompress_into(stored, out.data)
    elif len(stored) != out.size:
        raise FrameError(f"uncompressed frame holds {len(stored)} bytes, expected {out.size}")
    else:
        out[:] = np.frombuffer(stored, np.uint8)


def encode_against_payload(raw: U8, spec: CodecSpec, parent_payload: U8, scratch: Scratch) -> bytes:
    """``encode(raw, spec, parent_raw)`` without ever un-grouping the parent: the same bytes.

    Rotation and grouping are linear over XOR (``group(a ^ b) == group(a) ^ group(b)``), so the
    delta payload is ``group(raw) ^ parent_payload``, where ``parent_payload`` is the XOR of the
    payloads of the parent's chain (all in ``spec``'s layout).
    """
    data = raw
    if spec.exponent:
        data = transform.rotate_left(data, spec.planes, scratch.get("rotated", raw.size), scratch.get("temp", raw.size))
    if spec.planes:
        data = transform.group(data, spec.planes, scratch.get("group", raw.size))
    data = np.bitwise_xor(data, parent_payload, out=scratch.get("xor", raw.size))
    if spec.compressed:
        return zstdframe.compress(data.data, spec.level, spec.literals)
    return data.tobytes()


def decode_into(stored: bytes | memoryview, spec: CodecSpec, out: U8, scratch: Scratch) -> None:
    """Decode ``stored`` into ``out``. For xor codecs ``out`` holds the base raw bytes on entry."""
    size = out.size
    staged = spec.xor or spec.planes
    if spec.compressed:
        zstdframe.check_frame(stored, size, MAX_WINDOW)
        target = scratch.get("decoded", size) if staged else out
        zstdframe.decompress_into(stored, target.data)
        decoded: U8 = target
    else:
        if len(stored) != size:
            raise FrameError(f"uncompressed frame holds {len(stored)} bytes, expected {size}")
        decoded = np.frombuffer(stored, np.uint8)
        if not staged:
            out[:] = decoded
            return
    if spec.planes:
        plain = scratch.get("plain", size) if spec.xor else out
        transform.ungroup_into(decoded, plain, spec.planes, scratch.get("temp", size))
        if spec.exponent:
            transform.unrotate_in_place(plain, spec.planes, scratch.get("temp", size))
        decoded = plain
    if spec.xor:
        np.bitwise_xor(out, decoded, out=out)
