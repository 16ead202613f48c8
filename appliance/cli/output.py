"""Rendering results for people (text) and programs (``--json``), and progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from appliance.errors import ApplianceError


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


class Output:
    def __init__(self, json_mode: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def result(self, data: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
        if self.json_mode:
            self.out.write(json.dumps(data, sort_keys=True, indent=2, default=str) + "\n")
        else:
            self.out.write(text(data).rstrip("\n") + "\n")

    def note(self, message: str) -> None:
        if not self.json_mode:
            self.err.write(message.rstrip("\n") + "\n")

    def error(self, exc: ApplianceError) -> None:
        if self.json_mode:
            self.out.write(json.dumps(exc.to_dict(), sort_keys=True, indent=2) + "\n")
        self.err.write(f"appliance: error: {exc.problem}\n  remedy: {exc.remedy}\n")

    @contextmanager
    def progress(self, total: int | None, desc: str) -> Iterator[Callable[[int], None] | None]:
        """A byte-progress callback drawing a bar on a terminal (a counter if ``total`` is unknown)."""
        if self.json_mode or not self.err.isatty():
            yield None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=self.err, leave=False) as bar:
            yield bar.update
