"""Write a golden store written by the current writer. Run only for an intentional change:

    python -m tests.golden.make_golden --update-goldens --name NAME

Golden sets are never regenerated once committed: each records what some writer put on
devices. ``v1`` was written by the first v1 writer (codecs ``bgN+zstd-1``); ``v1-lit`` by
the writer with the ``zstd-lit`` codec addition; ``v2`` by the format v2 writer, whose
checkpoints are model directories (assets, shards with header metadata, index metadata). ``CURRENT`` names the set the writer of
this commit must reproduce byte for byte; a new writer revision adds a new set.

The golden store is read by tests/golden/test_golden.py on every run, so any later change
that cannot read what v1 wrote fails CI. Regenerating it is a format change: review it as one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import torch
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.format.directory import ShardEntry
from appliance.signing import SigningKey, TrustStore
from appliance.sources.tensors import byte_view, sources_from_dict
from appliance.store.assets import AssetSource, DirectoryParts
from appliance.store.commit import CommitRequest, commit
from appliance.store.config import StoreConfig
from appliance.store.encode import EncodeOptions
from appliance.store.store import Store

GOLDEN_ROOT = Path(__file__).parent
SETS = ("v1", "v1-lit", "v2")
CURRENT = "v2"
FIXED_TIME = 1_790_000_000.0  # 2026-09-21T...Z


def golden_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"appliance golden v1").digest()))


def golden_states() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    v1 = {
        "layer.weight": (torch.randn(64, 96, generator=g) * 0.02).to(torch.bfloat16),
        "layer.bias": torch.randn(96, generator=g),
        "embed": torch.randn(40, 16, generator=g).to(torch.float16),
        "mask": torch.rand(33, generator=g) > 0.5,
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "ids": torch.arange(50, dtype=torch.int32),
    }
    v2 = dict(v1)
    w = v1["layer.weight"].clone().view(-1)
    w[::97] = (w[::97].float() + 1e-3).to(torch.bfloat16)
    v2["layer.weight"] = w.view(64, 96)
    v2["step"] = torch.tensor(8, dtype=torch.int64)
    return [v1, v2]


def golden_assets() -> list[dict[str, bytes]]:
    """Gen 1 and gen 2 non-tensor files: config changes, tokenizer and model card are reused."""
    tokenizer = json.dumps({"model": {"vocab": {f"tok{i}": i for i in range(300)}}}, sort_keys=True).encode()
    v1 = {
        "config.json": b'{"architectures": ["Golden"], "hidden_size": 96}\n',
        "tokenizer.json": tokenizer,
        "docs/README.md": b"# golden model\n\nA model card.\n",
        "empty.txt": b"",
    }
    return [v1, v1 | {"config.json": b'{"architectures": ["Golden"], "hidden_size": 96, "step": 8}\n'}]


def golden_directory(state: dict[str, torch.Tensor], assets: dict[str, bytes]) -> DirectoryParts:
    names = list(state)
    sources = tuple(AssetSource(path, len(data), lambda data=data: io.BytesIO(data)) for path, data in assets.items())
    shards = (
        ShardEntry("model-00001-of-00002.safetensors", tuple(names[:3]), {"format": "pt"}),
        ShardEntry("model-00002-of-00002.safetensors", tuple(names[3:]), {"format": "pt", "producer": "golden"}),
    )
    return DirectoryParts(sources, shards, {"total_size": sum(t.numel() * t.element_size() for t in state.values())})


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(byte_view(t.contiguous()).data).hexdigest()


def build(target: Path) -> dict[str, object]:
    key = golden_key()
    config = StoreConfig(model="golden-model", frame_size=4096)
    store = Store.init(target, [key.public], config)
    expected: dict[str, object] = {"zstandard": zstandard.__version__, "generations": {}}
    for i, (state, assets) in enumerate(zip(golden_states(), golden_assets(), strict=True), start=1):
        options = EncodeOptions(policy="compact", frame_size=config.frame_size)
        request = CommitRequest(config.model, options, (key,), {"step": 6 + i, "note": "golden"},
                                clock=lambda i=i: FIXED_TIME + i,
                                directory=golden_directory(state, assets))  # fmt: skip
        result = commit(store.storage, store.trust, sources_from_dict(state), request)
        expected["generations"][str(result.generation)] = {  # type: ignore[index]
            "slot": result.slot,
            "manifest_digest": result.manifest_digest.hex,
            "tensors": {
                n: [str(t.dtype).removeprefix("torch."), list(t.shape), tensor_digest(t)] for n, t in state.items()
            },  # fmt: skip
            "assets": {path: hashlib.sha256(data).hexdigest() for path, data in assets.items()},
        }
    (target / "lock").unlink(missing_ok=True)
    return expected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--update-goldens", action="store_true", required=True)
    parser.add_argument("--name", required=True, help="a NEW golden set name (existing sets are kept)")
    args = parser.parse_args()
    here = GOLDEN_ROOT / args.name
    if here.exists():
        raise SystemExit(f"{here} exists: golden sets are kept forever; choose a new name")
    expected = build(here / "store")
    (here / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    print(f"wrote {here}; trust {TrustStore().with_key(golden_key().public).to_dict()['keys'][0]['keyid']}")


if __name__ == "__main__":
    main()
