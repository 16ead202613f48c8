"""A tiny training run for the resume test, run in fresh processes: ``python -m tests.integration.training_run``.

``MODE`` is ``full`` (6 uninterrupted steps), ``first`` (3 steps, then ``training.save``) or
``resume`` (a differently initialised model, ``training.load``, 3 more steps). Each run writes
its losses and final state (parameters, AdamW moments, scheduler, scaler, RNG) to ``OUT``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from appliance import training
from appliance.signing import SigningKey
from appliance.store.store import Store

STEPS, SPLIT = 6, 3


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, object], torch.Generator]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=STEPS + 2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return model, opt, {"scheduler": sched, "scaler": scaler}, torch.Generator().manual_seed(seed + 1)


def step(model: nn.Module, opt: torch.optim.Optimizer, stateful: dict[str, object], data: torch.Generator) -> float:
    x = torch.randn(16, 8, generator=data)
    y = torch.randn(16, 4, generator=data) + torch.rand(1).item() + random.random() + float(np.random.rand())
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    scaler = stateful["scaler"]
    scaler.scale(loss).backward()  # type: ignore[attr-defined]
    scaler.step(opt)  # type: ignore[attr-defined]
    scaler.update()  # type: ignore[attr-defined]
    stateful["scheduler"].step()  # type: ignore[attr-defined]
    return float(loss.detach())


def main(mode: str, root: str, keyfile: str, out: str) -> None:
    random.seed(7)
    np.random.seed(7)
    model, opt, stateful, data = build(seed=0 if mode != "resume" else 99)
    model.train()
    losses, start = [], 0
    store = Store.open(root)
    if mode == "resume":
        resumed = training.load(store, model, opt, stateful=stateful, generators={"data": data})
        start = resumed.position["step"]
    stop = SPLIT if mode == "first" else STEPS
    for _ in range(start, stop):
        losses.append(step(model, opt, stateful, data))
    if mode == "first":
        training.save(
            store,
            SigningKey.load(keyfile),
            model,
            opt,
            stateful=stateful,
            generators={"data": data},
            position={"step": stop},
        )
    tensors = {f"model/{k}": v.contiguous() for k, v in model.state_dict().items()}
    for name, state in training.optimizer_state_dict(model, opt)["state"].items():
        tensors |= {f"optim/{name}/{k}": v for k, v in state.items()}
    tensors |= {
        "rng/torch": torch.get_rng_state(),
        "rng/data": data.get_state(),
        "rng/numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
    }
    save_file(tensors, f"{out}.safetensors")
    sched, scaler = stateful["scheduler"], stateful["scaler"]
    Path(f"{out}.json").write_text(
        json.dumps(
            {
                "losses": [x.hex() for x in losses],
                "python_rng": random.random().hex(),
                "last_lr": [x.hex() for x in sched.get_last_lr()],  # type: ignore[attr-defined]
                "scale": float(scaler.get_scale()).hex(),  # type: ignore[attr-defined]
                "betas": repr(opt.param_groups[0]["betas"]),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
