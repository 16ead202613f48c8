"""The README's main job: the checkpoint lifecycle on a built-in model, narrated.

Owns: the demo script and the built-in demo state. Does not own any behaviour: every step
calls the same functions as the CLI (``appliance.cli.main``), in process.

Steps: keygen -> init -> commit (full) -> fine-tune 1% of weights -> commit (delta) ->
corrupt one frame of the newest checkpoint -> verify (detects it) -> restore (falls back to
the other slot, bit-exact) -> commit again (succeeds despite the damage) -> verify; then the
supervised lifecycle (``appliance.cli.demo_supervised``), then zero-loss adaptation
(``appliance.cli.demo_journal``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from appliance.cli.main import main as cli
from appliance.cli.output import Output


def demo_state(seed: int = 0, width: int = 512, layers: int = 4) -> dict[str, torch.Tensor]:
    """A small transformer-shaped state: bf16 weights, fp32 optimizer moments, step, RNG."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for name, shape in (
            ("attn.qkv", (3 * width, width)),
            ("attn.out", (width, width)),
            ("mlp.up", (4 * width, width)),
        ):
            w = torch.randn(shape, generator=g) * 0.02
            state[f"model.layers.{i}.{name}.weight"] = w.to(torch.bfloat16)
            state[f"optim.layers.{i}.{name}.exp_avg"] = torch.zeros(shape, dtype=torch.float32)
        state[f"model.layers.{i}.norm.weight"] = torch.ones(width, dtype=torch.bfloat16)
    state["train.step"] = torch.tensor(0, dtype=torch.int64)
    state["train.rng"] = torch.random.get_rng_state()
    return state


def fine_tune(state: dict[str, torch.Tensor], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Nudge ``fraction`` of every weight by an lr-scale step (a stand-in for online adaptation)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, t in state.items():
        if name.startswith("model.") and t.dtype == torch.bfloat16:
            flat = t.clone().view(-1)
            idx = torch.randperm(flat.numel(), generator=g)[: max(1, int(flat.numel() * fraction))]
            flat[idx] = (flat[idx].float() + 1e-3).to(torch.bfloat16)
            out[name] = flat.view(t.shape)
    out["train.step"] = state["train.step"] + 1
    return out


def _digest(path: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_demo(workdir: Path | None, out: Output) -> int:
    from appliance.sources.safetensors_io import export_safetensors

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    root, key = work / "store", work / "signing.key"

    def step(title: str, *argv: str, expect: int = 0) -> None:
        print(f"\n== {title}\n$ appliance {' '.join(argv)}", flush=True)
        code = cli(list(argv))
        print(f"(exit code {code})", flush=True)
        if code != expect:
            raise SystemExit(f"demo step failed: expected exit code {expect}, got {code}")

    print(f"demo work directory: {work}")
    v1 = demo_state()
    v2 = fine_tune(v1, 0.01, seed=1)
    export_safetensors(v1, work / "model-v1.safetensors", {"note": "built-in demo model"})
    export_safetensors(v2, work / "model-v2.safetensors", {"note": "after 1% online adaptation"})
    step("create a signing key", "keygen", str(key))
    step("create a two-slot store trusting that key", "init", str(root), "--trust", f"{key}.pub", "--model", "demo-mlp")
    step("commit the model (full checkpoint)", "commit", str(root), str(work / "model-v1.safetensors"),
         "--key", str(key), "--meta", json.dumps({"step": 0}))  # fmt: skip
    step("commit after adaptation (delta against the parent)", "commit", str(root),
         str(work / "model-v2.safetensors"), "--key", str(key), "--meta", json.dumps({"step": 1}))  # fmt: skip
    step("history", "log", str(root))
    victim = _largest_frame(root / "B" / "frames")
    print(f"\n== simulate bit rot: flip one bit in {victim.relative_to(work)}")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o640)
    victim.write_bytes(bytes(data))
    step("verify detects the damage (exit 1: a valid checkpoint remains)", "verify", str(root), expect=1)
    restored = work / "restored.safetensors"
    step("restore falls back to the other slot (exit 1: fallback used)", "restore", str(root), "--out", str(restored),
         expect=1)  # fmt: skip
    same = _digest(restored) == _digest(work / "model-v1.safetensors")
    print(f"restored state is bit-identical to generation 1: {same}")
    step("the next commit still succeeds", "commit", str(root), str(work / "model-v2.safetensors"), "--key", str(key))
    step("status", "status", str(root))
    from appliance.cli.demo_supervised import run_supervised_demo

    print("\n=== part 2: the supervised lifecycle (real supervisord, real model service, a power cut)", flush=True)
    supervised = run_supervised_demo(work)
    from appliance.cli.demo_journal import run_journal_demo

    print("\n=== part 3: zero-loss adaptation (the adaptation journal and a power cut)", flush=True)
    journaled = run_journal_demo(work)
    out.note(f"\ndemo finished; store left in {root}, nodes in {work / 'node'} and {work / 'node-journal'}")
    return 0 if same and supervised and journaled else 1


def _largest_frame(directory: Path) -> Path:
    return max(directory.iterdir(), key=lambda p: p.stat().st_size)
