"""Issue-6 codec additions: ``egN`` and ``zstd-lit`` round trips, and fast paths equal to the reference."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.codec import transform
from appliance.codec.frames import Scratch, encode
from appliance.errors import ManifestError
from appliance.format.codec_name import LIT_PARAMETERS, CodecSpec

pytestmark = pytest.mark.unit

NEW_SPECS = ["zstd-lit", "bg2+zstd-lit", "eg2+zstd-lit", "eg4+zstd-lit", "eg8+id", "eg4+id", "xor+bg2+zstd-lit",
             "xor+eg2+zstd-lit", "bg4+zstd-lit", "bg16+zstd-lit"]  # fmt: skip


def reference_ungroup(grouped: np.ndarray, planes: int) -> np.ndarray:
    """The original strided interleave, kept here as the oracle for the word-shift fast paths."""
    n = grouped.size // planes
    out = np.empty(grouped.size, np.uint8)
    dst = out.reshape(n, planes)
    for i in range(planes):
        dst[:, i] = grouped[i * n : (i + 1) * n]
    return out


def reference_rotate_left(raw: np.ndarray, word: int) -> np.ndarray:
    """Rotate each little-endian ``word``-byte element left by one bit, with Python ints."""
    out = bytearray()
    for i in range(0, raw.size, word):
        value = int.from_bytes(bytes(raw[i : i + word]), "little")
        bits = 8 * word
        out += (((value << 1) | (value >> (bits - 1))) & ((1 << bits) - 1)).to_bytes(word, "little")
    return np.frombuffer(bytes(out), np.uint8)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([2, 4, 8, 16]), st.integers(0, 200), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_fast_ungroup_equals_the_strided_reference(planes: int, elements: int, skew: int, seed: int) -> None:
    """Word-shift interleaves give the same bytes as the v1 strided copy, also at unaligned offsets."""
    rng = np.random.default_rng(seed)
    backing = rng.integers(0, 256, elements * planes + 16, dtype=np.uint8)
    grouped = backing[skew : skew + elements * planes]
    out_backing = np.zeros(elements * planes + 16, np.uint8)
    out = out_backing[skew : skew + elements * planes]
    transform.ungroup_into(grouped, out, planes, np.empty(out.size, np.uint8))
    assert bytes(out) == bytes(reference_ungroup(grouped, planes))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.integers(0, 64), st.integers(0, 2**32 - 1))
def test_rotation_matches_integer_arithmetic_and_inverts(word: int, elements: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, elements * word, dtype=np.uint8)
    temp = np.empty(raw.size, np.uint8)
    rotated = transform.rotate_left(raw, word, np.empty(raw.size, np.uint8), temp).copy()
    assert bytes(rotated) == bytes(reference_rotate_left(raw, word))
    transform.unrotate_in_place(rotated, word, temp)
    assert bytes(rotated) == bytes(raw)


def test_exponent_grouping_puts_the_bf16_exponent_in_the_top_plane() -> None:
    # bf16 1.0 = 0x3F80 (sign 0, exponent 127, mantissa 0); -2.0 = 0xC000 (sign 1, exponent 128)
    raw = np.array([0x3F80, 0xC000], np.uint16).view(np.uint8)
    stored = np.frombuffer(encode(raw, CodecSpec.parse("eg2+id")), np.uint8)
    assert list(stored[2:]) == [127, 128]  # plane 1: the exponents
    assert list(stored[:2]) == [0, 1]  # plane 0: mantissa bits then the sign bit


def test_zstd_lit_frames_are_standard_frames_any_decoder_reads() -> None:
    raw = np.random.default_rng(1).normal(0, 0.02, 4096).astype(np.float32).view(np.uint8)
    stored = encode(raw, CodecSpec.parse("zstd-lit"))
    assert zstandard.ZstdDecompressor().decompress(stored) == raw.tobytes()
    params = zstandard.get_frame_parameters(stored)
    assert params.content_size == raw.size and params.dict_id == 0 and not params.has_checksum
    assert LIT_PARAMETERS["window_log"] <= 17


def test_grammar_additions_round_trip_and_stay_strict() -> None:
    for name in NEW_SPECS:
        assert CodecSpec.parse(name).name == name
    for bad in ["eg16+zstd-1", "eg3+id", "zstd-lit2", "zstd-LIT", "eg2+bg2+id", "bg2+eg2+id", "lit", "eg2"]:
        with pytest.raises(ManifestError, match="unknown codec"):
            CodecSpec.parse(bad)
    with pytest.raises(ManifestError):
        CodecSpec(planes=16, exponent=True)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["bg2", "eg2", "bg4", "eg4", "bg8"]), st.integers(1, 120), st.integers(0, 2**32 - 1))
def test_delta_in_the_grouped_domain_is_byte_identical(layout: str, elements: int, seed: int) -> None:
    """A delta built from the parent chain's payloads equals one built from the parent's raw bytes."""
    from appliance.codec.frames import encode_against_payload, payload_into

    rng = np.random.default_rng(seed)
    size = elements * 16
    raws = [rng.integers(0, 256, size, dtype=np.uint8)]
    for _ in range(2):
        nxt = raws[-1].copy()
        nxt[rng.integers(0, size, max(1, size // 50))] ^= 1
        raws.append(nxt)
    full, delta = CodecSpec.parse(f"{layout}+zstd-lit"), CodecSpec.parse(f"xor+{layout}+zstd-lit")
    chain = [(full, encode(raws[0], full)), (delta, encode(raws[1], delta, raws[0]))]
    parent, payload = np.empty(size, np.uint8), np.empty(size, np.uint8)
    payload_into(chain[0][1], chain[0][0], parent)
    payload_into(chain[1][1], chain[1][0], payload)
    np.bitwise_xor(parent, payload, out=parent)
    assert encode_against_payload(raws[2], delta, parent, Scratch()) == encode(raws[2], delta, raws[1])
