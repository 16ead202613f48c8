"""Where each file of ``systemd/`` (and ``bootstrap/systemd/``) goes in the Debian package.

Owns: the mapping from the repository's systemd directory to installed paths (docs/image.md §1;
``systemd/tpm2/`` goes, inert, to ``/usr/share/appliance/tpm2/`` for ``customize-rootfs.sh --tpm2``),
used by ``image/build-deb.sh``. Everything there is packaged as it is at build time, so changes to
units, users and hardening flow into the image without copying; a file this mapping does not know
fails the build instead of being silently left out.

    python3 image/deb_layout.py STAGE DIR...    copy DIR's files into the package tree STAGE
    python3 image/deb_layout.py --units STAGE   unit names with an [Install] section (postinst enables them)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

UNIT_SUFFIXES = (".service", ".mount", ".timer", ".socket", ".path", ".target")
UNIT_DIR = "usr/lib/systemd/system"
SUBDIRS = {  # DIR/<name>/*.conf -> installed directory
    "system.conf.d": "usr/lib/systemd/system.conf.d",
    "journald.conf.d": "usr/lib/systemd/journald.conf.d",
    "tmpfiles.d": "usr/lib/tmpfiles.d",
    "sysusers.d": "usr/lib/sysusers.d",
}
# -> /etc/appliance (conffiles: local edits survive upgrades); supervisord-*.conf are optional program
# fragments (e.g. replication) that an operator includes from supervisord.conf when the node uses them
CONFIG = {"supervisord.conf", "node.json", "supervisord-replicate.conf", "supervisord-channel.conf"}


def destination(rel: Path) -> str | None:
    """Installed path (relative to /) of ``rel`` inside a systemd directory; None = not installed (docs)."""
    parts = rel.parts
    if rel.suffix == ".md":
        return None
    if parts[0] == "tpm2" and rel.suffix == ".conf":  # inert until customize-rootfs.sh --tpm2 installs them
        return "usr/share/appliance/tpm2/" + "/".join(parts[1:])
    return _placed(rel, parts)


def _placed(rel: Path, parts: tuple[str, ...]) -> str:
    if len(parts) == 1:
        name = parts[0]
        if name.endswith(UNIT_SUFFIXES):
            return f"{UNIT_DIR}/{name}"
        if name.endswith(".catalog"):
            return f"usr/lib/systemd/catalog/{name}"
        if name in CONFIG or (name.startswith("supervisord-") and name.endswith(".conf")):
            return f"etc/appliance/{name}"
    elif len(parts) == 2 and rel.suffix == ".conf":
        if parts[0] in SUBDIRS:
            return f"{SUBDIRS[parts[0]]}/{parts[1]}"
        if parts[0].endswith(tuple(s + ".d" for s in UNIT_SUFFIXES)):  # unit drop-ins
            return f"{UNIT_DIR}/{parts[0]}/{parts[1]}"
    raise SystemExit(f"deb_layout: do not know where {rel} goes; add it to image/deb_layout.py")


def stage(target: Path, sources: list[Path]) -> list[str]:
    placed = []
    for source in sources:
        if not source.is_dir():
            continue
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            dest = destination(path.relative_to(source))
            if dest is None:
                continue
            out = target / dest
            if out.exists():
                raise SystemExit(f"deb_layout: {path} would overwrite {dest}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            out.chmod(0o644)
            placed.append(dest)
    return placed


def installable_units(target: Path) -> list[str]:
    unit_dir = target / UNIT_DIR
    return sorted(
        p.name
        for p in unit_dir.glob("*")
        if p.is_file() and any(line.strip() == "[Install]" for line in p.read_text().splitlines())
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--units"] and len(argv) == 2:
        print("\n".join(installable_units(Path(argv[1]))))
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for dest in stage(Path(argv[0]), [Path(a) for a in argv[1:]]):
        print(f"  /{dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
