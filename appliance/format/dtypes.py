"""Element types a checkpoint can hold, by name, without importing torch: the one dtype table.

Owns: the dtype table (name -> item size, kind, safetensors code) used by every path — the
CLI import, the Python API and the safetensors export — and the byte-grouping plane count per
dtype. Names are torch's attribute names, so ``getattr(torch, name)`` works wherever that
torch build has the type (``appliance.sources.tensors`` says which one lacks it). Does not own
the mapping to ``torch.dtype`` objects (``appliance.sources.tensors``).

safetensors codes: every dtype both safetensors and torch know has one. ``F4`` counts 4-bit
values, torch's ``float4_e2m1fn_x2`` counts bytes of two: the safetensors shape's last
dimension is twice torch's (``values_per_element``). ``complex32`` and ``complex128`` have
no safetensors code; ``F6_E2M3``/``F6_E3M2`` have no torch type (``SAFETENSORS_ONLY``).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import ManifestError


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    kind: str  # "bool" | "int" | "uint" | "float" | "complex"
    safetensors: str | None = None  # the safetensors header code, None if it has none
    values_per_element: int = 1  # safetensors values per torch element (2 for packed F4)

    @property
    def planes(self) -> int:
        """Byte planes for the grouping transform: one per byte of a multi-byte element."""
        return self.itemsize if self.itemsize > 1 else 0


_TABLE = [
    DType("bool", 1, "bool", "BOOL"),
    DType("uint8", 1, "uint", "U8"),
    DType("int8", 1, "int", "I8"),
    DType("uint16", 2, "uint", "U16"),
    DType("int16", 2, "int", "I16"),
    DType("uint32", 4, "uint", "U32"),
    DType("int32", 4, "int", "I32"),
    DType("uint64", 8, "uint", "U64"),
    DType("int64", 8, "int", "I64"),
    DType("float16", 2, "float", "F16"),
    DType("bfloat16", 2, "float", "BF16"),
    DType("float32", 4, "float", "F32"),
    DType("float64", 8, "float", "F64"),
    DType("float8_e4m3fn", 1, "float", "F8_E4M3"),
    DType("float8_e4m3fnuz", 1, "float", "F8_E4M3FNUZ"),
    DType("float8_e5m2", 1, "float", "F8_E5M2"),
    DType("float8_e5m2fnuz", 1, "float", "F8_E5M2FNUZ"),
    DType("float8_e8m0fnu", 1, "float", "F8_E8M0"),
    DType("float4_e2m1fn_x2", 1, "float", "F4", 2),
    DType("complex32", 4, "complex"),
    DType("complex64", 8, "complex", "C64"),
    DType("complex128", 16, "complex"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _TABLE if d.safetensors}
SAFETENSORS_ONLY = frozenset({"F6_E2M3", "F6_E3M2"})  # safetensors codes torch has no type for


def dtype_named(name: object) -> DType:
    if not isinstance(name, str) or name not in DTYPES:
        raise ManifestError(f"unknown dtype {name!r:.40}; the format knows {', '.join(DTYPES)}")
    return DTYPES[name]


def from_safetensors(code: str, shape: tuple[int, ...]) -> tuple[DType, tuple[int, ...]]:
    """The dtype and torch shape of a safetensors tensor; ``ValueError`` says why there is none."""
    dtype = BY_SAFETENSORS.get(code)
    if dtype is None:
        if code in SAFETENSORS_ONLY:
            raise ValueError(f"safetensors dtype {code} has no torch type, so appliance cannot store it")
        raise ValueError(f"safetensors dtype {code} is unknown to appliance (it knows {', '.join(BY_SAFETENSORS)})")
    per = dtype.values_per_element
    if per == 1:
        return dtype, shape
    if not shape or shape[-1] % per:
        raise ValueError(f"safetensors dtype {code} needs a last dimension divisible by {per}, got {list(shape)}")
    return dtype, (*shape[:-1], shape[-1] // per)


def safetensors_code(name: str) -> str:
    """The safetensors code of a dtype; ``ValueError`` names a dtype safetensors cannot store."""
    code = dtype_named(name).safetensors
    if code is None:
        raise ValueError(f"safetensors has no code for dtype {name} (it stores {', '.join(BY_SAFETENSORS)})")
    return code
