"""Where each file of a store lives; the only module that builds store paths.

Owns: names and paths (docs/design.md §3). Does not own file contents.

    ROOT/store.json                         store configuration (model id, frame size, policy)
    ROOT/trust.json                         trust store (development; production: read-only rootfs)
    ROOT/lock                               advisory lock for writers
    ROOT/scrub.json                         scrub cursor: resumable pass position, marked frames
    ROOT/device-profile.json                measured restore rates of this device (``auto`` policy)
    ROOT/channel-seen.json                  newest channel head sequence imported from the channel inbox
    ROOT/{A,B}/frames/<sha256>              stored frames, named by the SHA-256 of their bytes
    ROOT/{A,B}/checkpoints/<gen>.manifest.json   signed bundle (DSSE envelope around the manifest)
    ROOT/{A,B}/checkpoints/<gen>.commit.json     commit record: the commit point
    ROOT/{A,B}/state.json                   slot boot state (UNKNOWN/GOOD/BAD; boot issue)

``<gen>`` is the generation as 20 decimal digits, so names sort in generation order.
Every component of every path is produced here from validated values (slot names from a
fixed set, digests from ``Digest``, generations from ints); nothing read from a manifest is
ever used as a path component.
"""

from __future__ import annotations

import re

from appliance.format.commit import SLOT_NAMES
from appliance.format.digest import Digest

STORE_CONFIG = "store.json"
TRUST_FILE = "trust.json"
LOCK_FILE = "lock"
SCRUB_STATE = "scrub.json"
DEVICE_PROFILE = "device-profile.json"
PINS = "pins.json"
CHANNEL_SEEN = "channel-seen.json"  # the persistence watchdog's anti-replay memory (docs/design.md §11.6)
FRAMES = "frames"
CHECKPOINTS = "checkpoints"
SLOT_STATE = "state.json"
MANIFEST_SUFFIX = ".manifest.json"
COMMIT_SUFFIX = ".commit.json"
_CHECKPOINT_NAME = re.compile(r"(\d{20})(\.manifest\.json|\.commit\.json)")


def _slot(slot: str) -> str:
    if slot not in SLOT_NAMES:
        raise ValueError(f"unknown slot {slot!r}")
    return slot


def frames_dir(slot: str) -> str:
    return f"{_slot(slot)}/{FRAMES}"


def checkpoints_dir(slot: str) -> str:
    return f"{_slot(slot)}/{CHECKPOINTS}"


def frame_path(slot: str, digest: Digest) -> str:
    return f"{frames_dir(slot)}/{digest.hex}"


def bundle_path(slot: str, generation: int) -> str:
    return f"{checkpoints_dir(slot)}/{generation:020d}{MANIFEST_SUFFIX}"


def record_path(slot: str, generation: int) -> str:
    return f"{checkpoints_dir(slot)}/{generation:020d}{COMMIT_SUFFIX}"


def slot_state_path(slot: str) -> str:
    return f"{_slot(slot)}/{SLOT_STATE}"


def parse_checkpoint_name(name: str) -> tuple[int, str] | None:
    """``(generation, "manifest" | "commit")`` for a checkpoint file name, else ``None``."""
    m = _CHECKPOINT_NAME.fullmatch(name)
    if m is None:
        return None
    return int(m[1]), "manifest" if m[2] == MANIFEST_SUFFIX else "commit"


def parse_frame_name(name: str) -> Digest | None:
    try:
        return Digest(name)
    except Exception:
        return None
