"""Capturing the serving model's state with a short pause, then writing it to the outbox.

Owns: ``capture`` (under the model lock: answer the canary input, clone every state tensor —
the only time serving waits), ``write`` (outside the lock: content digest, safetensors file,
atomic rename into the outbox) and ``Writer``, the one thread that writes exports at the
watchdog's lowered CPU and I/O priority (``persist_nice``) so that serving keeps the cores
(issue 16 goal 3). Does not own committing (``appliance.persist``).

The pause is a memory copy of the state (plus one forward pass of the canary input), not a
persist: hashing, compressing, signing and fsyncing happen in other threads and processes
while requests keep being answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from appliance import training
from appliance.errors import CanaryInputError, CanaryNotRecordableError, ExportFileError, ManifestError
from appliance.format.canary import Canary, check_recordable
from appliance.format.export import ExportInfo
from appliance.format.shown import a_or_an
from appliance.node.priority import lower_priority
from appliance.service import loader
from appliance.service.limits import MAX_INPUT_RANK
from appliance.sources.export import write_export

T = TypeVar("T")
CANARY_ATOL = 1e-5
CANARY_RTOL = 1e-4


@dataclass
class Snapshot:
    tensors: dict[str, torch.Tensor]
    step: int
    canary: Canary | None
    pause_s: float
    journal: dict[str, Any] | None = None  # the journal point this state includes (issue 17)
    training: dict[str, Any] | None = None  # its training record (appliance.training.served_record)


def capture(
    model: nn.Module,
    lock: AbstractContextManager[Any],
    at_capture: Callable[[], Any] | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
) -> Snapshot:
    """A private CPU copy of the model's training state and its canary answer, taken atomically.

    The state is ``appliance.training.get_state_dict(model, rng=False)``: ``model.state_dict()``
    under its own names, with the training record that makes the persisted checkpoint one
    ``appliance.training.load`` resumes (``served_record``).

    The destination memory is allocated and touched *before* the lock is taken, so the pause is
    a forward pass of the canary input plus a plain memory copy, not page faults (for a 1 GB
    state that halves the pause). If the state's layout changed meanwhile, it is cloned instead.
    ``buffers``: that memory made by the caller (``touched_buffers`` on the lowered ``Writer``).
    """
    buffers = touched_buffers(model) if buffers is None else buffers
    with lock:
        start = time.perf_counter()
        canary = _canary(model)
        tensors = _copy_into(training.get_state_dict(model, rng=False)["model"], buffers)
        step = loader.adaptation_step(model)
        point = at_capture() if at_capture is not None else None
        pause = time.perf_counter() - start
    record = training.served_record(tensors)  # persisted as a training checkpoint: training.load resumes it
    return Snapshot(tensors, step, canary, pause, point.to_dict() if point is not None else None, record)


def require_finite(snapshot: Snapshot) -> None:
    """``ExportFileError`` naming the first floating-point tensor holding NaN or ±Infinity."""
    _require_finite(snapshot.tensors)


def _require_finite(tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            raise ExportFileError(
                f"the served state is not finite: tensor {name!r:.200} holds NaN or Infinity; not exported",
                remedy="the model's state was damaged by adaptation; reboot to the last committed checkpoint "
                "(`appliance boot`) and check the adaptation inputs",
            )


def touched_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU memory for a capture of ``model``'s state, pages faulted in (the ``Writer`` does this, lowered)."""
    return {name: _touched(t) for name, t in model.state_dict().items()}


def _touched(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu")
    if out.numel():
        out.reshape(-1).view(torch.uint8).zero_()  # fault the pages in now, outside the lock
    return out


def _copy_into(state: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        buf = buffers.get(name)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            out[name] = t.detach().to("cpu", copy=True)
        else:
            out[name] = buf.copy_(t.detach())
    return out


def _canary(model: nn.Module) -> Canary | None:
    """The model's answer to its own canary input; ``CanaryInputError`` if it cannot take it.

    A canary is only ever recorded after the model ran it (``seed`` and every export), so boot
    never meets a canary input that the model refuses (docs/boot.md §4).
    """
    try:
        inputs = loader.canary_input(model)
        if inputs is None:
            return None
        with torch.inference_mode():
            expected = model(inputs)
        if not isinstance(expected, torch.Tensor):  # the output is the problem, not the input
            raise CanaryInputError(
                f"the model answered its canary input with {a_or_an(type(expected).__name__)}, not a tensor: "
                "the canary records the model's output tensor",
                remedy="make the model's forward() return a tensor (for a dict or a Hugging Face ModelOutput, "
                "wrap the model so that forward() returns its logits, e.g. model(x).logits)",
            )
        canary = Canary(input=inputs.tolist(), expected=expected.tolist(), atol=CANARY_ATOL, rtol=CANARY_RTOL)
        check_recordable(canary, MAX_INPUT_RANK)  # boot's canary request must be able to carry it
        return canary
    except CanaryInputError:
        raise
    except ManifestError as exc:
        part = exc.part if isinstance(exc, CanaryNotRecordableError) else None
        if isinstance(exc, CanaryNotRecordableError) and exc.nonfinite:  # a damaged state is the cause, not the canary
            _require_finite(dict(model.state_dict()))
        remedy = (
            "make the model's forward() answer its canary input with a tensor of rank 1..8 of finite numbers"
            if part == "answer" else None
        )  # fmt: skip
        raise CanaryInputError(f"the model's canary cannot be recorded: {exc.problem}", remedy=remedy) from exc
    except Exception as exc:  # the model's own code: any failure means it cannot take its canary input
        raise CanaryInputError(
            f"the model cannot take its own canary input ({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc


def write(snapshot: Snapshot, outbox: str | Path, model_entry: str, source: dict[str, Any] | None) -> ExportResult:
    start = time.perf_counter()
    path, info = write_export(
        snapshot.tensors,
        outbox,
        model=model_entry,
        step=snapshot.step,
        pause_s=snapshot.pause_s,
        canary=snapshot.canary,
        source=source,
        journal=snapshot.journal,
        training=snapshot.training,
    )
    return ExportResult(path, info, time.perf_counter() - start)


class Writer:
    """Runs export writes on one dedicated thread at niceness ``nice`` (0: not lowered).

    Dedicated because an unprivileged thread cannot raise its priority again: request threads
    must never be the ones lowered. The thread is created on the first export.
    """

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-write", initializer=self._lower)

    def _lower(self) -> None:
        if self.nice > 0:
            lower_priority(self.nice)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the writer thread (e.g. faulting in a capture's memory, ``touched_buffers``)."""
        return self._pool.submit(fn).result()

    def run(
        self, snapshot: Snapshot, outbox: str | Path, model_entry: str, source: dict[str, Any] | None
    ) -> ExportResult:
        """``require_finite`` then ``write`` on the writer thread; their errors are raised here."""

        def job() -> ExportResult:
            require_finite(snapshot)
            return write(snapshot, outbox, model_entry, source)

        return self._pool.submit(job).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class ExportResult:
    path: Path
    info: ExportInfo
    write_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "step": self.info.step,
            "pause_s": round(self.info.pause_s, 6),
            "write_s": round(self.write_s, 6),
            "raw_bytes": self.info.raw_bytes,
        }
