"""Pinned generations (``ROOT/pins.json``): checkpoints retention never collects.

Owns: ``Pins`` — the set of pinned generations with a label each (for example ``factory``, the
state a technician can always go back to), and its JSON form. Does not own reading or writing
the file (``appliance.store.store``) or retention itself (``appliance.store.gc``, rule G3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ManifestError
from appliance.format.canonical import require_keys
from appliance.format.manifest import MAX_GENERATION

PINS_FORMAT = "appliance.pins"
PINS_VERSION = 1
MAX_PINS = 1000
MAX_LABEL = 64


@dataclass(frozen=True)
class Pins:
    labels: Mapping[int, str] = field(default_factory=dict)  # generation -> label

    @property
    def generations(self) -> frozenset[int]:
        return frozenset(self.labels)

    def with_pin(self, generation: int, label: str) -> Pins:
        _check(generation, label)
        if generation not in self.labels and len(self.labels) >= MAX_PINS:
            raise ManifestError(f"at most {MAX_PINS} generations can be pinned")
        return Pins({**self.labels, generation: label})

    def without(self, generation: int) -> Pins:
        return Pins({g: lab for g, lab in self.labels.items() if g != generation})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PINS_FORMAT,
            "version": PINS_VERSION,
            "pins": [{"generation": g, "label": self.labels[g]} for g in sorted(self.labels)],
        }

    @classmethod
    def from_dict(cls, obj: object) -> Pins:
        d = require_keys(obj, "pins", {"format", "version", "pins"})
        if d["format"] != PINS_FORMAT or d["version"] != PINS_VERSION:
            raise ManifestError("not a v1 pins file")
        items = d["pins"]
        if not isinstance(items, list) or len(items) > MAX_PINS:
            raise ManifestError(f"pins must be a list of at most {MAX_PINS}")
        labels: dict[int, str] = {}
        for item in items:
            p = require_keys(item, "pin", {"generation", "label"})
            _check(p["generation"], p["label"])
            labels[p["generation"]] = p["label"]
        return cls(labels)


def _check(generation: object, label: object) -> None:
    if not isinstance(generation, int) or isinstance(generation, bool) or not 1 <= generation <= MAX_GENERATION:
        raise ManifestError(f"a pinned generation must be an integer in 1..2^63-1, got {generation!r:.40}")
    if not isinstance(label, str) or len(label) > MAX_LABEL or not label.isprintable():
        raise ManifestError(f"a pin label must be printable text of at most {MAX_LABEL} characters")
