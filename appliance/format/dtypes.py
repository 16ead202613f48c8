"""Element types a checkpoint can hold, by name, without importing torch.

Owns: the dtype table (name -> item size, kind) and the byte-grouping plane count per dtype.
Does not own: the mapping to ``torch.dtype`` (``appliance.tensors``) or to safetensors codes
(``appliance.sources``). Names are torch's attribute names, so ``getattr(torch, name)`` works
wherever that torch build has the type (the fp8 family differs between releases).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import ManifestError


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    kind: str  # "bool" | "int" | "uint" | "float" | "complex"

    @property
    def planes(self) -> int:
        """Byte planes for the grouping transform: one per byte of a multi-byte element."""
        return self.itemsize if self.itemsize > 1 else 0


_TABLE = [
    DType("bool", 1, "bool"),
    DType("uint8", 1, "uint"),
    DType("int8", 1, "int"),
    DType("uint16", 2, "uint"),
    DType("int16", 2, "int"),
    DType("uint32", 4, "uint"),
    DType("int32", 4, "int"),
    DType("uint64", 8, "uint"),
    DType("int64", 8, "int"),
    DType("float16", 2, "float"),
    DType("bfloat16", 2, "float"),
    DType("float32", 4, "float"),
    DType("float64", 8, "float"),
    DType("float8_e4m3fn", 1, "float"),
    DType("float8_e4m3fnuz", 1, "float"),
    DType("float8_e5m2", 1, "float"),
    DType("float8_e5m2fnuz", 1, "float"),
    DType("float8_e8m0fnu", 1, "float"),
    DType("float4_e2m1fn_x2", 1, "float"),
    DType("complex32", 4, "complex"),
    DType("complex64", 8, "complex"),
    DType("complex128", 16, "complex"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}


def dtype_named(name: object) -> DType:
    if not isinstance(name, str) or name not in DTYPES:
        raise ManifestError(f"unknown dtype {name!r:.40}; format v1 knows {', '.join(DTYPES)}")
    return DTYPES[name]
