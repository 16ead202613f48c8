"""Fixtures for tests that need torch and a real store in a temp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.s3server import SKIP_REASON, S3Server, rclone_binary, running_server


@pytest.fixture(scope="session")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3Server]:
    """A real S3 server (``rclone serve s3``) on loopback over ``tmp_path/s3``; skipped without rclone."""
    if rclone_binary() is None:
        pytest.skip(SKIP_REASON)
    with running_server(tmp_path / "s3") as s:
        yield s


@pytest.fixture
def store(tmp_path: Path, key: SigningKey) -> Store:
    """A store with 4 KiB frames, so small tensors still span many frames."""
    return Store.init(tmp_path / "store", [key.public], StoreConfig(model="test-model", frame_size=4096))


def weights(seed: int = 0, n: int = 64 * 1024) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16),
        "v": torch.randn(n // 4, generator=g),
        "step": torch.tensor(seed, dtype=torch.int64),
    }


def nudge(state: dict[str, torch.Tensor], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    w = state["w"].clone()
    idx = torch.randperm(w.numel(), generator=g)[: int(w.numel() * fraction)]
    w[idx] = (w[idx].float() + 1e-3).to(torch.bfloat16)
    out["w"] = w
    out["step"] = state["step"] + 1
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-exact equality (NaN payloads included), names and dtypes and shapes too."""
    if a.keys() != b.keys():
        return False
    for name in a:
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.numel() and not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            return False
    return True


def frame_files(store: Store, slot: str) -> list[Path]:
    root = Path(str(getattr(store.storage, "root")))
    return sorted((root / slot / "frames").iterdir())


def flip_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
