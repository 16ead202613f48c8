"""The built-in demo model: a frozen MLP backbone with a linear head that adapts online.

Owns: ``DemoModel`` and its factories. Does not own serving or persistence; it implements the
optional model hooks the service uses (see ``appliance.service.loader``):

* ``adapt(inputs, targets)`` — one Adam step of the head on a mean-squared error; the Adam
  moments and the step counter are registered buffers, so ``state_dict()`` is the whole
  state that must survive a power cut (weights + adaptation state).
* ``canary_input()`` — a fixed golden input; the service stores the answer to it with every
  export, and boot checks the restored service still gives it.
* ``adaptation_step()`` — how many adaptation steps the state has seen.

Only the head and its moments change while serving, so a persisted delta re-uses every
backbone frame and writes a few KiB.
"""

from __future__ import annotations

import torch
from torch import nn

BETAS = (0.9, 0.999)
EPS = 1e-8


class DemoModel(nn.Module):
    step: torch.Tensor

    def __init__(self, in_features: int, hidden: int, layers: int, out_features: int, lr: float = 1e-2) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.backbone = nn.Sequential(*blocks)
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(width, out_features)
        self.lr = lr
        self.in_features = in_features
        for name, p in self.head.named_parameters():
            self.register_buffer(f"adam_m_{name}", torch.zeros_like(p))
            self.register_buffer(f"adam_v_{name}", torch.zeros_like(p))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out

    def adapt(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One Adam step of the head towards ``targets``; returns the loss before the step."""
        with torch.no_grad():
            features = self.backbone(inputs)
        with torch.enable_grad():
            loss = nn.functional.mse_loss(self.head(features), targets)
            grads = torch.autograd.grad(loss, list(self.head.parameters()))
        with torch.no_grad():
            self.step += 1
            t = int(self.step)
            for (name, p), g in zip(self.head.named_parameters(), grads, strict=True):
                m, v = getattr(self, f"adam_m_{name}"), getattr(self, f"adam_v_{name}")
                m.mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
                v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
                m_hat, v_hat = m / (1 - BETAS[0] ** t), v / (1 - BETAS[1] ** t)
                p.sub_(self.lr * m_hat / (v_hat.sqrt() + EPS))
        return {"loss": float(loss.detach()), "step": float(t)}

    def canary_input(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(20240601)
        return torch.randn(4, self.in_features, generator=g)

    def adaptation_step(self) -> int:
        return int(self.step)


def _seeded(seed: int, **shape: int) -> DemoModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DemoModel(**shape)


def build() -> DemoModel:
    """The default built-in model: ~0.55 M parameters (~2 MiB of state)."""
    return _seeded(0, in_features=16, hidden=512, layers=3, out_features=4)


def build_large() -> DemoModel:
    """~1 GB of fp32 state (4 x 8960 wide layers), for boot and persist measurements."""
    return _seeded(0, in_features=1024, hidden=8960, layers=4, out_features=4)
