"""Standard zstd frames: one frame per stored frame, with its content size, no dictionary.

Owns: compressing, the structural check of a frame before decoding, and decoding into a
caller's buffer. Does not own deciding *whether* to compress (``frames``).

Why the check exists (docs/design.md §7, decompression bombs): a zstd frame header can claim
any size; one-shot decoders allocate what it claims. Before decoding we require exactly one
frame that spans the input (no concatenated, skippable or trailing data), a declared content
size equal to the manifest's ``raw_size``, no dictionary, and a window no larger than the cap.
The same properties make the frame decodable by nvCOMP's ``BitstreamKind.RAW`` Zstd decoder.
"""

from __future__ import annotations

import threading

import zstandard

from appliance.errors import FrameError, LimitExceededError
from appliance.format.codec_name import LIT_PARAMETERS

MAGIC = b"\x28\xb5\x2f\xfd"
MAX_BLOCK_SIZE = 128 * 1024
_local = threading.local()


def _compressor(level: int, literals: bool) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("cctx", {})
    key = (level, literals)
    if key not in cache:
        if literals:
            params = zstandard.ZstdCompressionParameters(
                **LIT_PARAMETERS, write_content_size=True, write_checksum=False, write_dict_id=False
            )
            cache[key] = zstandard.ZstdCompressor(compression_params=params)
        else:
            cache[key] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    compressor: zstandard.ZstdCompressor = cache[key]
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "dctx"):
        _local.dctx = zstandard.ZstdDecompressor()
    dctx: zstandard.ZstdDecompressor = _local.dctx
    return dctx


def compress(data: memoryview | bytes, level: int, literals: bool = False) -> bytes:
    """One standard frame with its content size; ``literals`` selects ``LIT_PARAMETERS``."""
    return bytes(_compressor(level, literals).compress(data))


def frame_length(data: bytes | memoryview, max_blocks: int) -> int:
    """Byte length of the zstd frame at the start of ``data``, walking its block headers."""
    try:
        pos = zstandard.frame_header_size(data)
    except zstandard.ZstdError as exc:
        raise FrameError(f"zstd frame header is invalid: {exc}") from exc
    has_checksum = bool(data[4] & 0x04)
    for _ in range(max_blocks):
        if pos + 3 > len(data):
            raise FrameError("zstd frame is truncated inside a block header")
        header = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or size > MAX_BLOCK_SIZE:
            raise FrameError("zstd frame has a reserved block type or an oversized block")
        pos += 3 + (1 if kind == 1 else size)
        if pos > len(data):
            raise FrameError("zstd frame is truncated inside a block")
        if last:
            return pos + (4 if has_checksum else 0)
    raise LimitExceededError(f"zstd frame has more than {max_blocks} blocks")


def check_frame(data: bytes | memoryview, raw_size: int, max_window: int) -> None:
    """Refuse anything but one standard frame that decodes to exactly ``raw_size`` bytes."""
    if bytes(data[:4]) != MAGIC:
        raise FrameError("stored frame does not start with the zstd magic number (skippable or foreign frame)")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise FrameError(f"zstd frame header is invalid: {exc}") from exc
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN or params.content_size != raw_size:
        raise LimitExceededError(
            f"zstd frame declares {params.content_size} bytes, the manifest says {raw_size} (decompression bomb?)"
        )
    if params.dict_id != 0:
        raise FrameError("zstd frame needs a dictionary; format v1 frames never use one")
    if params.window_size > max_window:
        raise LimitExceededError(f"zstd frame window {params.window_size} exceeds the cap {max_window}")
    length = frame_length(data, max_blocks=raw_size // 512 + 64)
    if length != len(data):
        raise FrameError(f"stored frame holds {len(data) - length} bytes after its zstd frame (concatenated data)")


def decompress_into(data: bytes | memoryview, out: memoryview) -> None:
    """Decode a frame that passed ``check_frame`` into ``out`` (exactly ``len(out)`` bytes)."""
    reader = _decompressor().stream_reader(data, read_size=len(data), read_across_frames=False)
    filled = 0
    try:
        while filled < len(out):
            n = reader.readinto(out[filled:])
            if n == 0:
                break
            filled += n
    except zstandard.ZstdError as exc:
        raise FrameError(f"zstd frame does not decode: {exc}") from exc
    if filled != len(out):
        raise FrameError(f"zstd frame decoded to {filled} bytes, expected {len(out)}")
