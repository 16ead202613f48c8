"""Codec names: every parameter that changes stored bytes, spelled out and parsed strictly.

Owns: ``CodecSpec`` and its grammar. Does not own: the codec implementations
(``appliance.codec``). A reader refuses a name it does not know; it never guesses.

Grammar (stages applied left to right when *encoding*, reversed when decoding)::

    codec   := [ "xor+" ] [ group "+" ] compressor
    group   := "bg" PLANES                byte-grouping: byte i of every element -> plane i
             | "eg" WORD                  exponent grouping: rotate every WORD-byte element
                                          left by one bit (sign -> lowest bit), then byte-group
    PLANES  := "2" | "4" | "8" | "16"
    WORD    := "2" | "4" | "8"
    compressor := "zstd-" LEVEL           one standard zstd frame with content size (libzstd level)
                | "zstd-lit"              the same frame format, literal-leaning parameters
                | "id"                    raw bytes

``xor`` means the frame's payload is ``raw XOR raw(base frame)``. Examples: ``id``,
``zstd-1``, ``bg2+zstd-1`` (bf16 weights), ``xor+bg2+zstd-1`` (a bf16 delta frame),
``eg2+zstd-lit`` (bf16 weights, the ``compact`` default since issue 6).

Additions after the first v1 release (backward compatible: every earlier name parses and
decodes exactly as before). ``eg`` puts the whole exponent of IEEE-style floats into the top
plane (bf16: plane 1 = the 8 exponent bits, plane 0 = 7 mantissa bits + sign), as ZipNN does.
``zstd-lit`` names the encoder parameters (``LIT_PARAMETERS``); any zstd decoder reads the
frame, the name only records how it was made: strategy fast, window 2^17, hash table 2^6,
minimum match 7. On weights it leaves nearly every exponent byte a Huffman-coded literal
instead of a short, costly match: bf16 exponent plane 2.6 bits/byte vs 2.9 at level 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import ManifestError

_GRAMMAR = re.compile(
    r"(?P<xor>xor\+)?(?:(?:bg(?P<planes>2|4|8|16)|eg(?P<word>2|4|8))\+)?"
    r"(?:zstd-(?:(?P<level>[1-9]|1[0-9])|(?P<lit>lit))|(?P<id>id))"
)
LIT_LEVEL = 1  # ``zstd-lit`` is a level-1-speed parameter set; ``level`` holds this nominal value
LIT_PARAMETERS = {
    "strategy": 1,  # ZSTD_fast
    "window_log": 17,
    "hash_log": 6,
    "chain_log": 6,
    "search_log": 1,
    "min_match": 7,
    "target_length": 0,
}


@dataclass(frozen=True)
class CodecSpec:
    xor: bool = False
    planes: int = 0  # 0 = no byte grouping
    level: int = 0  # 0 = "id" (stored uncompressed)
    exponent: bool = False  # "eg": rotate elements left by one bit before grouping
    literals: bool = False  # "zstd-lit": LIT_PARAMETERS instead of a libzstd level

    def __post_init__(self) -> None:
        if self.exponent and self.planes not in (2, 4, 8):
            raise ManifestError(f"exponent grouping needs 2-, 4- or 8-byte elements, not {self.planes}")
        if self.literals and self.level != LIT_LEVEL:
            raise ManifestError("zstd-lit frames carry the nominal level 1")

    @property
    def compressed(self) -> bool:
        return self.level > 0

    @property
    def name(self) -> str:
        parts = []
        if self.xor:
            parts.append("xor")
        if self.planes:
            parts.append(f"{'eg' if self.exponent else 'bg'}{self.planes}")
        if self.literals:
            parts.append("zstd-lit")
        else:
            parts.append(f"zstd-{self.level}" if self.level else "id")
        return "+".join(parts)

    @classmethod
    def parse(cls, value: object) -> CodecSpec:
        if not isinstance(value, str) or (m := _GRAMMAR.fullmatch(value)) is None:
            raise ManifestError(
                f"unknown codec {value!r:.40} (format v1 grammar: [xor+][bgN+|egN+](zstd-L|zstd-lit|id))"
            )
        group = m["planes"] or m["word"]
        return cls(
            xor=m["xor"] is not None,
            planes=int(group) if group else 0,
            level=0 if m["id"] else LIT_LEVEL if m["lit"] else int(m["level"]),
            exponent=m["word"] is not None,
            literals=m["lit"] is not None,
        )

    def __str__(self) -> str:
        return self.name


IDENTITY = CodecSpec()
