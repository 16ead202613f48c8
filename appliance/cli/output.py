"""Rendering results for people (text) and programs (``--json``), and progress bars.

Everything written for people passes through ``printable``: control characters (C0 except
newline and tab, DEL, C1) and the Unicode bidirectional overrides are shown as ``\\xNN`` /
``\\uNNNN`` escapes, so text that came from an event log, a trust store, a manifest or a
model (all of which another party may have written) cannot drive the terminal — no cursor
moves, colour changes, title rewrites or hidden lines. ``--json`` output is escaped by JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from appliance.errors import ApplianceError

_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: str) -> str:
    """``text`` with every character that could control a terminal replaced by its escape."""
    if text.isprintable():
        return text
    return "".join(
        c if c in "\n\t" or not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or ord(c) in _BIDI) else _escape(c)
        for c in text
    )


def one_line(text: str) -> str:
    """``printable`` that also escapes newline and tab: a field can never start a forged line."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _fields_escaped(obj: Any) -> Any:
    if isinstance(obj, str):
        return one_line(obj)
    if isinstance(obj, dict):
        return {k: _fields_escaped(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_fields_escaped(v) for v in obj]
    return obj


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
            # every string field is made one printable line before the renderer lays out its lines
            self.out.write(printable(text(_fields_escaped(data)).rstrip("\n")) + "\n")

    def note(self, message: str) -> None:
        if not self.json_mode:
            self.err.write(printable(message.rstrip("\n")) + "\n")

    def error(self, exc: ApplianceError, *, json_too: bool = True) -> None:
        """The error on stderr; in JSON mode also on stdout, unless the result printed there already carries it."""
        if self.json_mode and json_too:
            self.out.write(json.dumps(exc.to_dict(), sort_keys=True, indent=2) + "\n")
        self.err.write(printable(f"appliance: error: {exc.problem}\n  remedy: {exc.remedy}") + "\n")

    @contextmanager
    def progress(self, total: int | None, desc: str) -> Iterator[Callable[[int], None] | None]:
        """A byte-progress callback drawing a bar on a terminal (a counter if ``total`` is unknown)."""
        if self.json_mode or not self.err.isatty():
            yield None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=self.err, leave=False) as bar:
            yield bar.update
