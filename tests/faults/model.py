"""A small, deterministic model history for the fault suites, and in-memory stores to hold it.

Each generation's tensors differ from the previous one in a few places (so commits produce
reused, delta and full frames) and every tensor spans whole and partial 4 KiB frames. The
content digest of a generation is what the oracle compares a restored model against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from appliance.crypto import KekSource
from appliance.signing import SigningKey, TrustStore
from appliance.storage import Storage
from appliance.storage.recording import RecordingStorage
from appliance.store.config import StoreConfig
from appliance.store.encode import TensorSource
from appliance.store.keys import create_keyring
from appliance.store.store import Store

FRAME = 4096
MODEL_ID = "faults-model"
# name -> (dtype, itemsize, elements)
SPEC: dict[str, tuple[str, int, int]] = {
    "layer.w": ("float32", 4, 5 * FRAME // 4 + 100),  # 5 full frames + a partial one
    "layer.e": ("bfloat16", 2, FRAME // 2),  # exactly one frame
    "layer.v": ("float16", 2, FRAME),  # two frames, changed every other step
    "optim.m": ("float32", 4, FRAME // 2),  # two frames of zeros: reused by every generation
    "train.step": ("int64", 8, 1),
}


def contents_digest(tensors: Mapping[str, bytes]) -> str:
    """SHA-256 over (name, bytes) in name order: equal iff every tensor is byte-identical."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(tensors[name]).digest())
    return h.hexdigest()


class History:
    """Tensor states by step; ``state(k)`` is a pure function of (seed, k)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def state(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        out: dict[str, np.ndarray] = {}
        for name, (_, itemsize, n) in SPEC.items():
            nbytes = itemsize * n
            if name == "optim.m":
                out[name] = np.zeros(nbytes, np.uint8)
            elif name == "train.step":
                out[name] = np.frombuffer(np.int64(step).tobytes(), np.uint8).copy()
            else:
                out[name] = rng.integers(0, 256, nbytes, dtype=np.uint8)
        for k in range(1, step + 1):  # each step nudges a few bytes: deltas stay small
            pos = (k * 997) % (out["layer.w"].size - 16)
            out["layer.w"][pos : pos + 16] ^= np.uint8(k & 0xFF or 1)
            if k % 3 == 0:
                out["layer.e"][:64] ^= np.uint8(0x5A)
            if k % 2 == 0:
                out["layer.v"][k * 31 % 4000 :][:8] ^= np.uint8(0x11)
        return out

    def sources(self, step: int) -> list[TensorSource]:
        state = self.state(step)
        return [TensorSource(name, SPEC[name][0], (SPEC[name][2],), (lambda a=arr: a)) for name, arr in state.items()]

    def digest(self, step: int) -> str:
        return contents_digest({n: a.tobytes() for n, a in self.state(step).items()})


def empty_store_storage(kek: KekSource | None = None) -> RecordingStorage:
    """A recording storage holding an initialised, empty store (both slot trees durable).

    ``kek``: an encrypted store (its keyring written durably before the log starts).
    """
    storage = RecordingStorage()
    for slot in ("A", "B"):
        storage.mkdir(slot)
        storage.fsync_dir("")
        for sub in ("frames", "checkpoints"):
            storage.mkdir(f"{slot}/{sub}")
        storage.fsync_dir(slot)
    if kek is not None:
        create_keyring(storage, kek)
    storage.ops.clear()
    return storage


def make_config(keep: int = 2, encrypt: bool = False) -> StoreConfig:
    return StoreConfig(model=MODEL_ID, frame_size=FRAME, keep=keep, encrypt=encrypt)


def open_store(storage: Storage, trust: TrustStore, config: StoreConfig) -> Store:
    return Store(storage, config, trust)


class Keys:
    """The signing keys the suites use: one trusted, one stranger."""

    def __init__(self) -> None:
        self.signer = SigningKey.generate()
        self.stranger = SigningKey.generate()
        self.trust = TrustStore().with_key(self.signer.public, "fault-suite signer")
