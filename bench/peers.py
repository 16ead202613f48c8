"""The peers: what a user would run instead of appliance, each measured on the same file.

Owns: restic and borg (persist = backup of the safetensors file, restore = extract it back),
the careful user (``sha256sum`` then ``safetensors.load_file`` and touch every page),
``torch.load(weights_only=True)`` of a ``torch.save`` file, and zipnn (ratio and speed). A peer
that is not installed is skipped with the reason. Nothing here installs anything: run.sh does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.measure import dir_bytes, run_child, run_tool

RESTIC_ENV = {"RESTIC_PASSWORD": "bench-only-not-a-secret", "RESTIC_CACHE_DIR": ""}
BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}


def missing(tool: str) -> str | None:
    if tool == "zipnn":
        try:
            import zipnn  # noqa: F401
        except ImportError:
            return "zipnn is not installed (pip install zipnn)"
        return None
    if shutil.which(tool) is None:
        return f"{tool} is not on PATH" + (
            " (apt-get install restic)" if tool == "restic" else " (pip install borgbackup)"
        )
    return None


class Restic:
    name = "restic"

    def __init__(self, work: Path) -> None:
        self.repo, self.work = work / "restic-repo", work
        self.env = RESTIC_ENV | {"RESTIC_CACHE_DIR": str(work / "restic-cache")}

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run_tool(["restic", "init", "--repo", str(self.repo)], env=self.env)

    def backup(self, source: Path) -> dict[str, Any]:
        before = dir_bytes(self.repo)
        r = run_tool(["restic", "backup", "--repo", str(self.repo), source.name], env=self.env, cwd=source.parent)
        return r | {"added_bytes": dir_bytes(self.repo) - before, "stored_bytes": dir_bytes(self.repo)}

    def restore(self) -> dict[str, Any]:
        target = self.work / "restic-out"
        shutil.rmtree(target, ignore_errors=True)
        r = run_tool(["restic", "restore", "latest", "--repo", str(self.repo), "--target", str(target)], env=self.env)
        shutil.rmtree(target, ignore_errors=True)
        return r


class Borg:
    name = "borg"

    def __init__(self, work: Path) -> None:
        self.repo, self.work, self.count = work / "borg-repo", work, 0

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        run_tool(["borg", "init", "--encryption", "none", str(self.repo)], env=BORG_ENV)

    def backup(self, source: Path) -> dict[str, Any]:
        before = dir_bytes(self.repo)
        self.count += 1
        r = run_tool(
            ["borg", "create", "--compression", "lz4", f"{self.repo}::s{self.count}", source.name],
            env=BORG_ENV,
            cwd=source.parent,
        )
        return r | {"added_bytes": dir_bytes(self.repo) - before, "stored_bytes": dir_bytes(self.repo)}

    def restore(self) -> dict[str, Any]:
        target = self.work / "borg-out"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        r = run_tool(["borg", "extract", f"{self.repo}::s{self.count}"], env=BORG_ENV, cwd=target)
        shutil.rmtree(target, ignore_errors=True)
        return r


def careful_user(source: Path, sha256_file: str, tool: str = "hashlib") -> dict[str, Any]:
    return run_child("careful", path=str(source), sha256_file=sha256_file, tool=tool)


def torch_save(source: Path, pt: Path) -> dict[str, Any]:
    return run_child("torch_save", source=str(source), path=str(pt))


def torch_load(pt: Path) -> dict[str, Any]:
    return run_child("torch_load", path=str(pt))


def zipnn(source: Path) -> dict[str, Any]:
    return run_child("zipnn", source=str(source), threads=2)
