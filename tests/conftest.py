"""Shared fixtures. Torch-free: tests/unit runs on Python 3.10 without torch."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No APPLIANCE_* setting from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("APPLIANCE_") or name == "NOTIFY_SOCKET":
            monkeypatch.delenv(name, raising=False)
    yield
