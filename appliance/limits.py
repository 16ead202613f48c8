"""Safety caps on every length read from disk or from a caller.

Owns: the numbers. Does not own: enforcement (parsers and readers call ``check``).

A cap exists so that hostile or rotten input fails fast with ``LimitExceededError`` instead of
allocating or looping without bound (decompression bombs, 2^63 sizes, million-entry manifests).
Each value is generous for real models (a 70B bf16 model at 4 MiB frames has ~35,000 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import LimitExceededError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    manifest_max_bytes: int = 64 * MiB  # signed bundle file (DSSE envelope + manifest)
    commit_record_max_bytes: int = 64 * KiB
    config_max_bytes: int = 1 * MiB  # store.json, trust.json, slot state
    metadata_max_bytes: int = 4 * MiB  # the user's JSON metadata, canonical-encoded
    json_max_depth: int = 64
    metadata_int_max_digits: int = 4300  # an integer in metadata: what every reader's JSON parser converts
    max_tensors: int = 1_000_000
    max_frames: int = 4_000_000
    max_tensor_dims: int = 64
    max_name_bytes: int = 1024
    frame_max_raw_bytes: int = 64 * MiB  # one frame's decoded size
    tensor_max_bytes: int = 1 << 42  # 4 TiB: no real tensor is larger
    max_delta_depth: int = 64  # absolute bound; the store config sets the working depth
    max_keys: int = 256
    max_assets: int = 10_000  # non-tensor files of a model directory
    asset_max_bytes: int = 4 * GiB  # one asset (a tokenizer.json is ~10 MiB; a stray .bin may be GBs)
    assets_max_total_bytes: int = 16 * GiB

    def check(self, what: str, value: int, cap: int) -> None:
        """Raise ``LimitExceededError`` if ``value`` is negative or above ``cap``."""
        if value < 0 or value > cap:
            raise LimitExceededError(f"{what} is {value}, outside the allowed range 0..{cap}")


DEFAULT_LIMITS = Limits()
