"""The journal fault suites' oracle: digests of the demo model after k steps, computed without a journal."""

from __future__ import annotations

from appliance.journal import step as steps
from appliance.models import demo
from appliance.service import loader
from tests.integration.journal_helpers import batch, state_digest


class Oracle:
    """``digest(k)``: the state after steps 1..k (seed i, batch i); advances one model, caches every digest."""

    def __init__(self) -> None:
        self.model = demo.build()
        self.digests = [state_digest(self.model)]

    def digest(self, k: int) -> str:
        with steps.deterministic(1):
            while len(self.digests) <= k:
                i = len(self.digests)
                x, y = batch(i)
                with steps.seeded(i):
                    loader.adapt(self.model, x, y)
                self.digests.append(state_digest(self.model))
        return self.digests[k]
