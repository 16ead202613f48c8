"""The inverse frame transforms as torch ops, for decoded frames that already live on a device.

Owns: ``undo_transforms`` — byte un-grouping, the ``eg`` un-rotation and the ``xor`` delta
application — with the same results, byte for byte, as ``appliance.codec.frames.decode_into``
(tests compare them on CPU tensors for every codec and element size). Does not own zstd
decoding (nvCOMP, before this) or hashing (before that).

All tensors are flat ``uint8``; the rotation works on signed integer views with an explicit
mask, because torch's ``>>`` on signed integers is arithmetic.
"""

from __future__ import annotations

import torch

from appliance.format.codec_name import CodecSpec

_SIGNED = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def ungroup(grouped: torch.Tensor, planes: int, out: torch.Tensor, frames: int = 1) -> None:
    """Interleave the ``planes`` planes of ``grouped`` into ``out`` (plane i -> byte i).

    ``frames`` equal-sized frames laid back to back are un-grouped by one strided copy (one
    kernel on a GPU instead of one per frame).
    """
    n = out.numel() // (planes * frames)
    out.view(frames, n, planes).copy_(grouped.view(frames, planes, n).transpose(1, 2))


def unrotate_(data: torch.Tensor, word: int) -> None:
    """Rotate every ``word``-byte element of ``data`` right by one bit, in place."""
    bits = 8 * word
    values = data.view(_SIGNED[word])
    low_bit = torch.bitwise_and(values, 1)
    carry = torch.bitwise_left_shift(low_bit, bits - 1)
    mask = (1 << (bits - 1)) - 1
    shifted = torch.bitwise_and(torch.bitwise_right_shift(values, 1), mask)
    torch.bitwise_or(shifted, carry, out=values)


def undo_transforms(
    decoded: torch.Tensor, spec: CodecSpec, out: torch.Tensor, temp: torch.Tensor, frames: int = 1
) -> None:
    """``out`` := the raw bytes of ``frames`` equal-sized frames whose zstd stage is undone.

    ``decoded`` and ``out`` hold the frames back to back (frame i at ``i * out.numel() //
    frames``). For xor codecs ``out`` holds the base frames' raw bytes on entry. ``temp`` is
    scratch of at least ``out.numel()`` bytes on the same device; ``decoded`` may be ``temp``'s
    neighbour but must not overlap ``out``.
    """
    size = out.numel()
    plain = decoded
    if spec.planes:
        target = temp[:size] if spec.xor else out
        ungroup(decoded, spec.planes, target, frames)
        if spec.exponent:
            unrotate_(target, spec.planes)
        plain = target
    if spec.xor:
        out.bitwise_xor_(plain)
    elif plain.data_ptr() != out.data_ptr():
        out.copy_(plain)
