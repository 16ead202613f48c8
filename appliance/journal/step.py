"""One adaptation step as the journal records it and as replay runs it again.

Owns: turning a step's tensors into ``StepPayload`` blobs and back (exact bytes, no float
formatting), ``seeded`` (the step runs with the CPU RNG seeded from the recorded seed, the
caller's RNG stream untouched) and ``deterministic`` (``torch.use_deterministic_algorithms``
and a fixed intra-op thread count, as recorded in the segment header). The service's live
steps and boot's replay run through the same ``seeded`` block with the same settings, so a
replayed state is bit-identical on CPU (docs/design.md §15.5 says what holds on a GPU).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

from appliance.format.journal import StepPayload, TensorBlob
from appliance.format.shown import a_or_an

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32}  # fmt: skip


def blob(name: str, t: torch.Tensor) -> TensorBlob:
    t = t.detach().to("cpu").contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise ValueError(f"the journal cannot record {a_or_an(dtype)} tensor")
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return TensorBlob(name, dtype, tuple(t.shape), data)


def tensor(b: TensorBlob) -> torch.Tensor:
    dtype = _DTYPES.get(b.dtype)
    if dtype is None:
        raise ValueError(f"journal tensor {b.name!r:.40} has an unknown dtype {b.dtype!r:.20}")
    if not b.data:
        return torch.empty(b.shape, dtype=dtype)
    return torch.frombuffer(bytearray(b.data), dtype=dtype).reshape(b.shape)


def payload(seed: int, step_before: int, inputs: torch.Tensor, targets: torch.Tensor,
            result: dict[str, float]) -> StepPayload:  # fmt: skip
    return StepPayload(seed, step_before, (blob("inputs", inputs), blob("targets", targets)), result)


def tensors_of(p: StepPayload) -> tuple[torch.Tensor, torch.Tensor]:
    by = {b.name: b for b in p.tensors}
    if set(by) != {"inputs", "targets"}:
        raise ValueError("a journal step holds exactly the tensors 'inputs' and 'targets'")
    return tensor(by["inputs"]), tensor(by["targets"])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the RNG seeded from ``seed``; the caller's CPU RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        # not torch.manual_seed: it also queues lazy CUDA seeding with a captured stack (1.4 ms per step)
        torch.default_generator.manual_seed(seed)
        # a model on the GPU draws from the CUDA generators too (they are seeded, not restored after)
        if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.manual_seed_all(seed)
        yield


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic algorithms and ``threads`` intra-op threads for the block (restored after)."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if old_threads != threads:
        torch.set_num_threads(threads)
    set_deterministic(True)
    try:
        yield
    finally:
        set_deterministic(old_det)
        if old_threads != threads:
            torch.set_num_threads(old_threads)


def set_deterministic(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without importing ``torch._inductor`` when nothing did.

    The public call imports the inductor (8.8 s on the 2-core dev machine, at every boot) only to
    set its own flag; without inductor loaded there is nothing compiled for that flag to affect.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode)
