"""Codec names: every parameter that changes stored bytes, spelled out and parsed strictly.

Owns: ``CodecSpec`` and its grammar. Does not own: the codec implementations
(``appliance.codec``). A reader refuses a name it does not know; it never guesses.

Grammar (stages applied left to right when *encoding*, reversed when decoding)::

    codec   := [ "xor+" ] [ "bg" PLANES "+" ] compressor
    PLANES  := "2" | "4" | "8" | "16"      byte-grouping: byte i of every element -> plane i
    compressor := "zstd-" LEVEL | "id"     one standard zstd frame with content size | raw bytes

``xor`` means the frame's payload is ``raw XOR raw(base frame)``. Examples: ``id``,
``zstd-1``, ``bg2+zstd-1`` (bf16 weights), ``xor+bg2+zstd-1`` (a bf16 delta frame).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import ManifestError

_GRAMMAR = re.compile(r"(?P<xor>xor\+)?(?:bg(?P<planes>2|4|8|16)\+)?(?:zstd-(?P<level>[1-9]|1[0-9])|(?P<id>id))")


@dataclass(frozen=True)
class CodecSpec:
    xor: bool = False
    planes: int = 0  # 0 = no byte grouping
    level: int = 0  # 0 = "id" (stored uncompressed)

    @property
    def compressed(self) -> bool:
        return self.level > 0

    @property
    def name(self) -> str:
        parts = []
        if self.xor:
            parts.append("xor")
        if self.planes:
            parts.append(f"bg{self.planes}")
        parts.append(f"zstd-{self.level}" if self.level else "id")
        return "+".join(parts)

    @classmethod
    def parse(cls, value: object) -> CodecSpec:
        if not isinstance(value, str) or (m := _GRAMMAR.fullmatch(value)) is None:
            raise ManifestError(f"unknown codec {value!r:.40} (format v1 grammar: [xor+][bgN+](zstd-L|id))")
        return cls(
            xor=m["xor"] is not None,
            planes=int(m["planes"]) if m["planes"] else 0,
            level=0 if m["id"] else int(m["level"]),
        )

    def __str__(self) -> str:
        return self.name


IDENTITY = CodecSpec()
