"""Fixtures shared by the fault suites, and the end-of-run table of what they exercised."""

from __future__ import annotations

import pytest

from appliance.crypto import FileKek

from . import counts
from .model import History, Keys
from .workloads import Recorded, write_paths


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def history() -> History:
    return History(seed=5)


@pytest.fixture(scope="session")
def sealed_kek(tmp_path_factory: pytest.TempPathFactory) -> FileKek:
    return FileKek.create(tmp_path_factory.mktemp("kek") / "store.kek")


@pytest.fixture(scope="session")
def recorded_sealed(keys: Keys, history: History, sealed_kek: FileKek) -> dict[str, Recorded]:
    """The same write paths on an encrypted store (issue 18)."""
    paths = write_paths(keys, history, sealed_kek)
    counts.add("write paths (encrypted store)", len(paths))
    return paths


@pytest.fixture(scope="session")
def recorded(keys: Keys, history: History) -> dict[str, Recorded]:
    paths = write_paths(keys, history)
    counts.add("write paths", len(paths))
    counts.add("ops", sum(len(r.ops) for r in paths.values()))
    return paths


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = counts.render()
    if lines:
        terminalreporter.section("fault suites")
        for line in lines:
            terminalreporter.write_line(line)
        counts.dump()
