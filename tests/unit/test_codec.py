"""Frame codecs: exact round trips, and refusal of every malformed or hostile zstd frame."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.codec import transform, zstdframe
from appliance.codec.frames import Scratch, decode_into, encode
from appliance.errors import FrameError, LimitExceededError
from appliance.format.codec_name import CodecSpec

pytestmark = pytest.mark.unit

SPECS = ["id", "zstd-1", "zstd-3", "bg2+zstd-1", "bg4+zstd-1", "bg8+id", "bg16+zstd-1", "xor+bg2+zstd-1", "xor+id",
         "xor+zstd-1", "xor+bg4+id",
         # additions of issue 6 (zstd-lit, exponent grouping); earlier names decode exactly as before
         "zstd-lit", "bg2+zstd-lit", "eg2+zstd-lit", "eg4+zstd-lit", "eg8+id", "eg4+id", "xor+bg2+zstd-lit",
         "xor+eg2+zstd-lit", "bg4+zstd-lit", "bg16+zstd-lit"]  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(SPECS), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_encode_decode_is_bit_exact(name: str, elements: int, seed: int) -> None:
    spec = CodecSpec.parse(name)
    rng = np.random.default_rng(seed)
    size = elements * 16
    raw = rng.integers(0, 256, size, dtype=np.uint8)
    raw[: size // 2] = 0  # some compressible structure
    base = rng.integers(0, 256, size, dtype=np.uint8)
    stored = encode(raw, spec, base if spec.xor else None)
    out = base.copy() if spec.xor else np.full(size, 0xAA, np.uint8)
    if size:
        decode_into(stored, spec, out, Scratch())
    assert bytes(out) == bytes(raw)


@given(st.sampled_from([2, 4, 8, 16]), st.binary(max_size=512))
def test_grouping_law(planes: int, data: bytes) -> None:
    raw = np.frombuffer(data[: len(data) - len(data) % planes], np.uint8)
    out = np.empty_like(raw)
    transform.ungroup_into(transform.group(raw, planes), out, planes)
    assert bytes(out) == bytes(raw)


def test_codec_names_round_trip_and_unknown_names_are_refused() -> None:
    for name in SPECS:
        assert CodecSpec.parse(name).name == name
    for bad in ["", "lz4", "zstd-0", "zstd-20", "bg3+zstd-1", "bg2+xor+zstd-1", "zstd-1+bg2", "ID", " id"]:
        with pytest.raises(Exception, match="unknown codec"):
            CodecSpec.parse(bad)


def _frame(data: bytes, **kwargs: object) -> bytes:
    return bytes(zstandard.ZstdCompressor(level=1, **kwargs).compress(data))  # type: ignore[arg-type]


RAW = bytes(range(256)) * 64  # 16 KiB


def _decode(stored: bytes, size: int = len(RAW)) -> bytes:
    out = np.zeros(size, np.uint8)
    decode_into(stored, CodecSpec.parse("zstd-1"), out, Scratch())
    return bytes(out)


def test_valid_frame_decodes() -> None:
    assert _decode(_frame(RAW)) == RAW


@pytest.mark.parametrize(
    ("stored", "error", "needle"),
    [
        # bomb: the header claims more than the manifest allows
        (_frame(RAW * 4), LimitExceededError, "declares"),
        # unknown content size (streaming frame): refused, never decoded unbounded
        (_frame(RAW, write_content_size=False), LimitExceededError, "declares"),
        # trailing data / concatenated frames
        (_frame(RAW) + _frame(b"x"), FrameError, "after its zstd frame"),
        (_frame(RAW) + b"garbage", FrameError, "after its zstd frame"),
        # skippable frame in front
        (b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd" + _frame(RAW), FrameError, "magic"),
        # not zstd at all
        (b"PK\x03\x04" + RAW[:100], FrameError, "magic"),
        # truncated
        (_frame(RAW)[:-3], FrameError, "truncated"),
        (b"\x28\xb5\x2f\xfd", FrameError, "header"),
    ],
)
def test_malformed_frames_are_refused_before_decoding(stored: bytes, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        _decode(stored)


def test_frame_needing_a_dictionary_is_refused() -> None:
    samples = [bytes((i + j) % 256 for j in range(64)) * 8 for i in range(200)]
    dictionary = zstandard.train_dictionary(2048, samples)
    stored = bytes(zstandard.ZstdCompressor(level=1, dict_data=dictionary).compress(RAW))
    assert zstandard.get_frame_parameters(stored).dict_id != 0
    with pytest.raises(FrameError, match="dictionary"):
        _decode(stored)


def _raw_block_frame(payload: bytes, window_exponent: int) -> bytes:
    """A hand-built valid frame: 4-byte content size, explicit window descriptor, one raw block."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0x80, window_exponent << 3]) + len(payload).to_bytes(4, "little")
    block = (1 | (0 << 1) | (len(payload) << 3)).to_bytes(3, "little")
    return header + block + payload


def test_huge_window_is_refused() -> None:
    assert _decode(_raw_block_frame(RAW, window_exponent=4)) == RAW  # 16 KiB window: fine
    with pytest.raises(LimitExceededError, match="window"):
        _decode(_raw_block_frame(RAW, window_exponent=17))  # 128 MiB window: refused


def test_forged_content_size_matching_manifest_but_short_payload_is_refused() -> None:
    stored = bytearray(_frame(RAW))
    # a frame whose declared size equals the manifest but whose blocks decode to less
    short = _frame(RAW[:1000])
    with pytest.raises((FrameError, LimitExceededError)):
        _decode(short, size=len(RAW))
    assert zstdframe.frame_length(bytes(stored), 1000) == len(stored)


def test_uncompressed_frame_of_wrong_size_is_refused() -> None:
    out = np.zeros(10, np.uint8)
    with pytest.raises(FrameError, match="expected 10"):
        decode_into(b"x" * 11, CodecSpec.parse("id"), out, Scratch())
