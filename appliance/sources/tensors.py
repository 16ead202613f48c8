"""torch <-> bytes: the only module of the store path that touches ``torch`` tensors' memory.

Owns: dtype-name mapping, uint8 views of tensor memory (zero-copy for contiguous CPU
tensors), allocation of restore destinations, and ``TensorSource`` construction.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from appliance.codec.transform import U8
from appliance.errors import TensorMismatchError, UsageError, UserError
from appliance.format.directory import check_reserved_names
from appliance.format.dtypes import DTYPES
from appliance.format.manifest import TensorEntry
from appliance.format.shown import a_or_an, shown
from appliance.storage.mapping import Region
from appliance.store.encode import TensorSource


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if name not in DTYPES or not isinstance(dtype, torch.dtype):
        raise TensorMismatchError(
            f"dtype {name} is not available in this torch build ({torch.__version__})",
            remedy="restore on a node whose torch supports this dtype, or export with a supported dtype",
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UsageError(
            f"dtype {dtype} cannot be stored (the format knows {', '.join(DTYPES)})",
            remedy="convert the tensor to a dtype the format knows before saving it",
        )
    return name


def byte_view(t: torch.Tensor) -> U8:
    """A 1-D uint8 numpy view of ``t``'s memory; ``t`` must be a contiguous CPU tensor."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise TensorMismatchError(f"tensor on {t.device} (contiguous={t.is_contiguous()}) has no CPU byte view")
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8).numpy()
    flat = t.detach().as_strided((t.numel(),), (1,))  # contiguous: size-1 dims may carry any stride
    return flat.view(torch.uint8).numpy()


def check_strided(name: str, t: torch.Tensor, error: type[UserError]) -> None:
    """Refuse tensors that have no plain element memory to read or write, naming ``name``.

    Meta tensors hold no data; sparse, MKL-DNN and other non-strided layouts, nested tensors and
    quantized tensors store something other than their logical elements (format v1 stores dense
    elements of the dtypes in ``appliance.format.dtypes`` only).
    """
    kind = None
    if t.is_meta or t.device.type == "meta":
        kind = "a meta tensor (it holds no data)"
    elif t.is_nested:
        kind = "a nested tensor"
    elif t.is_quantized:
        kind = f"a quantized tensor ({t.dtype})"
    elif t.layout != torch.strided:
        kind = f"a {str(t.layout).removeprefix('torch.')} tensor"
    if kind is not None:
        raise error(
            f"tensor {shown(name)} is {kind}; only dense (strided) tensors can be stored or restored",
            remedy="convert it first (tensor.to_dense(), .dequantize(), or materialise it on a real device)",
        )


def source_from_tensor(name: str, t: torch.Tensor) -> TensorSource:
    """A source for one tensor of any strides, device or lazy conj/neg bit (materialised when loaded)."""
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"value for {shown(name)} is {a_or_an(type(t).__name__)}, not a torch.Tensor")
    check_strided(name, t, UsageError)
    try:
        dtype = dtype_name(t.dtype)
    except UsageError as exc:
        raise UsageError(f"tensor {shown(name)}: {exc.problem}") from exc

    def load() -> U8:
        plain = t.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
        return byte_view(plain)

    return TensorSource(name, dtype, tuple(t.shape), load)


API_TENSORS_REMEDY = (
    "pass argument `tensors` as a flat mapping of name -> torch.Tensor (e.g. model.state_dict()); "
    "for nested training state (optimizer, LR scheduler, grad scaler, RNG) use appliance.training.save"
)


def sources_from_dict(tensors: Mapping[str, torch.Tensor]) -> list[TensorSource]:
    """One source per tensor of an API caller's flat mapping; errors name the API argument."""
    if not isinstance(tensors, Mapping):
        raise UsageError(
            f"argument `tensors` is {a_or_an(type(tensors).__name__)}, not a mapping of name -> torch.Tensor",
            remedy=API_TENSORS_REMEDY,
        )
    check_reserved_names(n for n in tensors if isinstance(n, str))
    out = []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise UsageError(
                f"argument `tensors`: the value for {shown(name)} is {a_or_an(type(t).__name__)}, not a torch.Tensor",
                remedy=API_TENSORS_REMEDY,
            )
        out.append(source_from_tensor(name, t))
    return out


def allocate(entry: TensorEntry) -> torch.Tensor:
    return torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))


def tensor_from_region(entry: TensorEntry, region: Region) -> torch.Tensor:
    """A tensor over a zero-copy restore region; the tensor keeps the region's memory alive."""
    if entry.nbytes == 0:
        return allocate(entry)
    memory = torch.frombuffer(region.memory, dtype=torch.uint8, count=entry.nbytes)
    return memory.view(torch_dtype(entry.dtype)).reshape(entry.shape)


def check_destination(entry: TensorEntry, t: torch.Tensor) -> U8:
    """The byte view of a plain (contiguous CPU) destination; other layouts: ``appliance.sources.destinations``."""
    if not isinstance(t, torch.Tensor):
        raise TensorMismatchError(f"destination for {entry.name!r} is not a torch.Tensor")
    check_strided(entry.name, t, TensorMismatchError)
    if str(t.dtype).removeprefix("torch.") != entry.dtype or tuple(t.shape) != entry.shape:
        raise TensorMismatchError(
            f"tensor {entry.name!r}: checkpoint has {entry.dtype}{list(entry.shape)}, "
            f"destination is {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        )
    if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg():
        raise TensorMismatchError(
            f"destination {entry.name!r} ({t.device}, strides {t.stride()}) has no plain byte view",
            remedy="restore through appliance.api.load(into=...), which fills any layout",
        )
    return byte_view(t)
