"""Model entry points the supervised tests hand to the real service (importable via PYTHONPATH).

Each is the built-in demo model with one behaviour a fault test needs; none is used in production.
"""

from __future__ import annotations

import os
import signal

import torch

from appliance.models.demo import DemoModel, _seeded

QUERY_OF_DEATH = 666.0


class FragileModel(DemoModel):
    """Dies like a segfault on a "query of death" when its checkpoint has ``fragile`` set."""

    fragile: torch.Tensor

    def __init__(self, **shape: int) -> None:
        super().__init__(**shape)
        self.register_buffer("fragile", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int(self.fragile) and x.numel() and float(x.reshape(-1)[0]) == QUERY_OF_DEATH:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def fragile() -> FragileModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FragileModel(in_features=16, hidden=512, layers=3, out_features=4)


def broken() -> DemoModel:
    """Model code that cannot even be built (a bad software update, not a bad checkpoint)."""
    raise RuntimeError("model code is broken: missing weights file")


def medium() -> DemoModel:
    """~50 MB of state: commits take long enough to be interrupted and to overlap requests."""
    return _seeded(0, in_features=16, hidden=2048, layers=4, out_features=4)


class WithTransientBuffer(DemoModel):
    """A non-persistent buffer is not in the checkpoint: a ``meta`` build would leave it garbage."""

    scale: torch.Tensor

    def __init__(self, **shape: int) -> None:
        super().__init__(**shape)
        self.register_buffer("scale", torch.ones(4), persistent=False)


def transient_buffer() -> WithTransientBuffer:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return WithTransientBuffer(in_features=16, hidden=512, layers=3, out_features=4)


def tied() -> DemoModel:
    """The head's bias shared under a second name, as tied embeddings are."""
    model = _seeded(0, in_features=16, hidden=512, layers=3, out_features=4)
    model.register_parameter("bias_alias", model.head.bias)
    return model


def reads_weights_at_init() -> DemoModel:
    """A factory that reads a weight's value (a meta tensor has none)."""
    model = _seeded(0, in_features=16, hidden=512, layers=3, out_features=4)
    model.initial_norm = float(model.head.weight.detach().norm())
    return model


class ChannelsLastConvNet(torch.nn.Module):
    """A small CNN kept in ``channels_last`` (common on Jetson) whose canary is an image batch (2,3,8,8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 4, 3)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=torch.channels_last)
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.head(y.mean(dim=(2, 3)))

    def canary_input(self) -> torch.Tensor:
        return torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)


def conv_channels_last() -> ChannelsLastConvNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ChannelsLastConvNet().eval().to(memory_format=torch.channels_last)


class RefusesItsCanary(DemoModel):
    """A model whose own canary input has the wrong width: ``seed`` must refuse to record it."""

    def canary_input(self) -> torch.Tensor:
        return torch.zeros(1, 3)


def refuses_its_canary() -> RefusesItsCanary:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return RefusesItsCanary(in_features=16, hidden=64, layers=2, out_features=4)


MEMORY_HOG = 777.0


class HogModel(DemoModel):
    """Allocates (and touches) 4 GiB on a "memory hog" query: under a memory limit the kernel OOM-kills it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() and float(x.reshape(-1)[0]) == MEMORY_HOG:
            hog = torch.ones(1 << 30, dtype=torch.float32)  # 4 GiB, every page written
            return super().forward(x) + hog[0]
        return super().forward(x)


def hog() -> HogModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return HogModel(in_features=16, hidden=512, layers=3, out_features=4)


class NanCanary(DemoModel):
    """Answers its canary with NaN (new-user trial: seed exited 34, "damaged manifest")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


class ScalarCanary(DemoModel):
    """A 0-d canary input (new-user trial: seed exited 41, "quarantined export")."""

    def canary_input(self) -> torch.Tensor:
        return torch.tensor(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(1, 1).expand(1, 16))


class Rank9Canary(DemoModel):
    """A rank-9 canary input, beyond what boot's canary request carries (rank <= 8): seed accepted it."""

    def canary_input(self) -> torch.Tensor:
        return torch.zeros((1,) * 8 + (16,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, 16))


def _demo_like(cls: type[DemoModel]) -> DemoModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(in_features=16, hidden=64, layers=2, out_features=4)


def nan_canary() -> DemoModel:
    return _demo_like(NanCanary)


def nan_state() -> DemoModel:
    """A model whose own state holds NaN (so its canary answer does too): the state is blamed, not the canary."""
    model = _demo_like(DemoModel)
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).view(-1)[0] = float("nan")
    return model


def scalar_canary() -> DemoModel:
    return _demo_like(ScalarCanary)


def rank9_canary() -> DemoModel:
    return _demo_like(Rank9Canary)


class ScalarAnswer(DemoModel):
    """Answers its canary with a 0-d tensor (second trial: seed exited 41, "quarantined export")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).sum()


class Rank9Answer(DemoModel):
    """Answers its canary with a rank-9 tensor (second trial: seeded)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).reshape((1,) * 7 + tuple(super().forward(x).shape))


def scalar_answer() -> DemoModel:
    return _demo_like(ScalarAnswer)


def rank9_answer() -> DemoModel:
    return _demo_like(Rank9Answer)


class DictAnswer(DemoModel):
    """Answers its canary with a dict, as a Hugging Face ``ModelOutput`` does (first trial: a remedy about the input)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x)}


def dict_answer() -> DemoModel:
    return _demo_like(DictAnswer)
