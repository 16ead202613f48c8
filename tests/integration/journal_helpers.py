"""Driving the journal the way the model service does, with an independent oracle of the states.

``Driver`` runs the built-in demo model's steps through ``Journal`` exactly as
``appliance.service.journaling.ServiceJournal.step`` does (``Journal.record_step`` under the lock:
record, seeded deterministic step, outcome; ack after ``wait``); ``oracle`` recomputes the state after step k from scratch without
any journal, so a replay is compared with an independent computation, not with itself.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import torch

from appliance.journal import step as steps
from appliance.journal.files import JournalFiles
from appliance.journal.journal import Journal, Recovery
from appliance.models import demo
from appliance.service import loader

BASE = "d" * 64  # content digest of the (fresh demo model) checkpoint the journal continues


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def oracle(k: int) -> str:
    """Digest of the demo model after steps 1..k (seed i, batch i), computed without a journal."""
    model = demo.build()
    with steps.deterministic(1):
        for i in range(1, k + 1):
            x, y = batch(i)
            with steps.seeded(i):
                loader.adapt(model, x, y)
    return state_digest(model)


class Driver:
    def __init__(self, files: JournalFiles, key: bytes, group_commit_s: float = 0.0, max_bytes: int = 64 << 20):
        self.model = demo.build()
        self.lock = threading.Lock()
        self.journal = Journal(files, key, None, model="demo", group_commit_s=group_commit_s, max_bytes=max_bytes)

    def recover(self, point: Any = None, digest: str = BASE) -> Recovery:
        return self.journal.recover(point, digest, 1, lambda x, y: loader.adapt(self.model, x, y),
                                    lambda: loader.adaptation_step(self.model))  # fmt: skip

    def step(self, i: int | None = None) -> int:
        """One step with seed and batch ``i`` (default: the next step number); returns the acked index."""
        with self.lock:
            i = i if i is not None else loader.adaptation_step(self.model) + 1
            x, y = batch(i)
            before, seed = loader.adaptation_step(self.model), i

            def run() -> dict[str, Any]:
                with steps.deterministic(1), steps.seeded(seed):
                    result = loader.adapt(self.model, x, y)
                assert result is not None
                return result

            index, _ = self.journal.record_step(seed, before, x, y, run)
        self.journal.wait(index)
        return index

    def digest(self) -> str:
        return state_digest(self.model)
