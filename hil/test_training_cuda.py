"""Training state on a CUDA device: the CUDA RNG (dropout) and GPU optimizer state resume bit-exactly.

Run: ``pytest -m hil hil/test_training_cuda.py`` on a machine with a CUDA GPU (Jetson or discrete).
Skips, saying why, without CUDA. The CPU twin of this test (fresh process, AdamW + scheduler +
scaler + dropout) is ``tests/integration/test_training.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from appliance import training  # noqa: E402
from appliance.signing import SigningKey  # noqa: E402
from appliance.store.config import StoreConfig  # noqa: E402
from appliance.store.store import Store  # noqa: E402

pytestmark = [
    pytest.mark.hil,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (Jetson or discrete GPU)"),
]


def _build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, 8)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _step(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> float:
    x = torch.randn(32, 64, device="cuda")  # drawn from the CUDA generator, like dropout's masks
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss)


def test_cuda_rng_and_gpu_optimizer_state_resume_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    torch.use_deterministic_algorithms(True)
    try:
        _run_and_resume(tmp_path)
    finally:
        torch.use_deterministic_algorithms(False)


def _run_and_resume(tmp_path: Path) -> None:
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m"))
    model, opt, sched = _build(0)
    torch.cuda.manual_seed_all(5)
    full = [_step(model, opt, sched) for _ in range(6)]
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = _build(0)
    torch.cuda.manual_seed_all(5)
    first = [_step(model, opt, sched) for _ in range(3)]
    training.save(store, key, model, opt, stateful={"sched": sched}, position={"step": 3})
    torch.cuda.manual_seed_all(999)  # a "fresh" device RNG and model
    model, opt, sched = _build(1)
    resumed = training.load(store, model, opt, stateful={"sched": sched})
    assert resumed.position == {"step": 3}
    assert next(iter(opt.state.values()))["exp_avg"].is_cuda  # moments went back to the GPU
    assert first + [_step(model, opt, sched) for _ in range(3)] == full
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
