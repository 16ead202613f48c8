"""Rules of the technicians' recovery console: login lockout, sessions, request origin, action plans.

Owns: the login-throttle state machine (``LoginRecord``: failures in a window -> locked for a
while), session expiry, the Host / Origin allowlist decisions, the transport rule (plain HTTP
only on loopback) and every technician action's *plan*: what it does, its consequence spelled
out for the confirmation page, and whether it is allowed now (``ActionPlan``; a rollback only
to a verified, trusted generation at or above the anti-rollback floor). Does not own HTTP,
templates, password hashing, clocks or running an action (``appliance.console``).

Pure: callers pass the time (seconds, any monotonic or wall clock, consistently) and the facts.
Sources: OWASP ASVS v4 V2.2 (anti-automation: lockout / throttling), V3 (sessions: idle and
absolute timeouts, rotation at login), V4.2.2 / V13 (CSRF), V14.5 (Host/Origin); ETSI EN 303 645
5.1 (no universal default passwords) and 5.5 (secure communication).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

# --- login throttling and lockout -------------------------------------------------------------


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5  # failed logins within ``window_s`` that lock the account / client
    window_s: float = 900.0
    lockout_s: float = 900.0


@dataclass(frozen=True)
class LoginRecord:
    """Recent failed logins of one key (a technician name or a client address) and any lock."""

    failures: tuple[float, ...] = ()
    locked_until: float = 0.0

    def locked(self, now: float) -> bool:
        return now < self.locked_until

    def retry_after(self, now: float) -> float:
        return max(0.0, self.locked_until - now)


def after_failure(rec: LoginRecord, now: float, policy: LockoutPolicy) -> LoginRecord:
    """One more failure; reaching ``max_failures`` within the window locks for ``lockout_s``."""
    recent = (*(t for t in rec.failures if now - t < policy.window_s), now)
    if len(recent) >= policy.max_failures:
        return LoginRecord((), max(rec.locked_until, now + policy.lockout_s))
    return replace(rec, failures=recent)


def after_success(rec: LoginRecord) -> LoginRecord:
    """A correct password clears the failures (never an active lock: that is checked first)."""
    return LoginRecord((), rec.locked_until)


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionPolicy:
    idle_s: float = 900.0  # ASVS 3.3.2: re-authenticate after idle time
    absolute_s: float = 8 * 3600.0  # and after a working day at most


def session_alive(created: float, last_seen: float, now: float, policy: SessionPolicy) -> bool:
    return now - last_seen < policy.idle_s and now - created < policy.absolute_s


# --- where requests may come from ---------------------------------------------------------------


def normalise_host(value: str) -> str:
    """``Host`` header value -> lower-case host without port (``[::1]:8471`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """DNS rebinding defence: the Host header must name this console, never an arbitrary domain."""
    if not host_header:
        return False
    return normalise_host(host_header) in {normalise_host(h) for h in allowed}


def origin_allowed(origin: str | None, referer: str | None, allowed_hosts: Iterable[str]) -> bool:
    """A state change must come from a page of this console: Origin (else Referer) names an allowed host.

    A request carrying neither is refused: browsers send Origin on every cross-origin and every
    POST request; a missing one means a non-browser client, which uses the CLI instead.
    """
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return host_allowed(parts.hostname, allowed_hosts)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(normalise_host(address)).is_loopback
    except ValueError:
        return normalise_host(address) == "localhost"


def needs_tls(address: str) -> bool:
    """Plain HTTP only on loopback; every other listen address (service port, gadget) gets TLS."""
    return not is_loopback(address)


# --- technician actions -----------------------------------------------------------------------

ACTIONS = ("verify", "scrub", "slot-reset", "rollback", "restart-service", "diagnostics", "import", "diagnostics-usb")


@dataclass(frozen=True)
class ActionPlan:
    """One action as the technician confirms it: what happens, and why it is or is not allowed now."""

    action: str
    title: str
    consequence: str
    params: Mapping[str, Any] = field(default_factory=dict)
    commits: bool = False  # creates a signed generation (done by the persistence side, never the console)
    refusal: str | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "title": self.title,
            "consequence": self.consequence,
            "params": dict(self.params),
            "commits": self.commits,
            "allowed": self.allowed,
            "refusal": self.refusal,
        }


def plan_verify() -> ActionPlan:
    return ActionPlan(
        "verify",
        "Verify every checkpoint now (deep)",
        "Reads every committed checkpoint of both slots, checks signatures and every frame's SHA-256, and "
        "decodes each frame to check its raw digest. Nothing is changed; the disk is busy for a while and "
        "serving may slow down.",
        {"deep": True},
    )


def plan_scrub(max_seconds: float) -> ActionPlan:
    return ActionPlan(
        "scrub",
        "Scrub now",
        f"Re-verifies stored frames for up to {max_seconds:.0f} s and replaces a damaged frame with its verified "
        "twin from the other slot. Frames damaged in both slots are marked, never patched. The next scrub "
        "resumes where this one stops.",
        {"max_seconds": max_seconds},
    )


def plan_slot_reset(slot: str, state: Mapping[str, Any]) -> ActionPlan:
    """Clearing a BAD mark: the checkpoint is tried again at the next boot (and marked BAD again if it fails)."""
    title = f"Reset the BAD mark of slot {slot}"
    if state.get("state") != "BAD":
        return ActionPlan("slot-reset", title, "", {"slot": slot}, refusal=f"slot {slot} is not marked BAD")
    return ActionPlan(
        "slot-reset",
        title,
        f"Slot {slot} generation {state.get('generation')} was marked BAD ({state.get('reason') or 'no reason'}). "
        "Its mark is cleared and its boot attempts reset to 0: the next boot tries it again, and a checkpoint "
        "that still fails is marked BAD again. Signatures, the floor and the other slot are not touched.",
        {"slot": slot},
    )


def plan_restart(phase: str | None) -> ActionPlan:
    return ActionPlan(
        "restart-service",
        "Restart the model service",
        "Runs the boot sequence again: the model service stops (inference is unavailable until it serves "
        "again), the newest good checkpoint is restored with every frame verified, canary-checked and "
        f"admitted. Current service phase: {phase or 'not running'}.",
    )


def plan_diagnostics() -> ActionPlan:
    return ActionPlan(
        "diagnostics",
        "Export a diagnostics bundle",
        "Writes one .tar.gz with the event log, slot and store status, verify and scrub results, the "
        "restore-time report, software versions and the appliance units' journal. It never contains "
        "keys or model weights. Nothing on the node changes.",
    )


def plan_diagnostics_usb(device: str, detected: bool) -> ActionPlan:
    """Diagnostics onto a stick: the one action that mounts a stick read-write (imports never do)."""
    title = "Write a diagnostics bundle to the USB stick"
    if not detected:
        return ActionPlan("diagnostics-usb", title, "", {"device": device},
                          refusal="choose a detected stick on the USB page")  # fmt: skip
    return ActionPlan(
        "diagnostics-usb",
        title,
        f"The stick {device} is mounted read-write for this action only (nosuid, nodev, noexec), one new file "
        "appliance-diagnostics-<time>.tar.gz is written at its top level (never replacing a file), flushed, and "
        "the stick is unmounted. The bundle never contains keys or model weights. Nothing on the node changes. "
        "A write-protected or full stick is refused and nothing is written.",
        {"device": device},
    )


@dataclass(frozen=True)
class GenerationFacts:
    """What the console knows about one committed generation (from the store's verify report)."""

    slot: str
    generation: int
    ok: bool  # record, signature under the current trust store, model id and frames all verified
    problem: str = ""


def plan_rollback(
    target: int, floor: int, newest: int | None, facts: Iterable[GenerationFacts], signer_problem: str | None = None
) -> ActionPlan:
    """Roll back by re-committing an older generation's exact content as a new generation.

    Allowed only for a generation that is committed, verifies under the *current* trust store
    (revoked or untrusted signers stay refused), is at or above the anti-rollback floor and is
    older than the newest one. The floor is never lowered: the re-commit gets a new, higher
    generation, signed by this node's device key on the persistence side. ``signer_problem``:
    why that signature would be refused under the key roles (``console.rollback_check``).
    """
    title = f"Roll back to generation {target}"
    params = {"generation": target}
    found = [f for f in facts if f.generation == target]
    refusal: str | None = None
    if not found:
        refusal = f"generation {target} is not committed in either slot"
    elif target < floor:
        refusal = f"generation {target} is below the anti-rollback floor {floor}; rolling back past it is refused"
    elif newest is not None and target >= newest:
        refusal = f"generation {target} is not older than the newest generation {newest}"
    elif not any(f.ok for f in found):
        refusal = f"generation {target} does not verify: {found[0].problem or 'unknown problem'}"
    elif signer_problem is not None:
        refusal = signer_problem
    if refusal is not None:
        return ActionPlan("rollback", title, "", params, commits=True, refusal=refusal)
    slot = next(f.slot for f in found if f.ok)
    new = (newest or target) + 1
    return ActionPlan(
        "rollback",
        title,
        f"The exact content of generation {target} (slot {slot}) is committed again as new generation {new}, "
        "signed by this node's device key (frames are reused, so little is written). The model service is then "
        "restarted through the boot sequence and serves it after a verified restore and canary; inference is "
        f"unavailable meanwhile. Generations newer than {target} stay in the store until retention removes "
        f"them. The anti-rollback floor ({floor}) is not lowered.",
        params,
        commits=True,
    )


# --- USB sticks and imports -----------------------------------------------------------------

# File systems a portable checkpoint may travel on (udev ID_FS_TYPE). Anything else is shown as "not a
# checkpoint stick" and never mounted: no NTFS/HFS drivers with a history of parser bugs on the node.
KNOWN_FILESYSTEMS = frozenset({"vfat", "exfat", "ext4", "ext3", "ext2"})
MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "noexec")


def is_usb_stick(props: Mapping[str, str]) -> bool:
    """A block device on the USB bus carrying a file system we mount (udev properties)."""
    return (
        props.get("SUBSYSTEM") == "block"
        and props.get("ID_BUS") == "usb"
        and props.get("ID_FS_TYPE", "") in KNOWN_FILESYSTEMS
        and props.get("DEVTYPE") in ("partition", "disk")
    )


@dataclass(frozen=True)
class StickCheckpoint:
    """One checkpoint found on a stick, as the console lists it."""

    generation: int
    model: str = ""
    signers: tuple[str, ...] = ()
    trusted: bool = False
    problem: str = ""  # why it cannot be imported ("" = importable)
    already: bool = False

    @property
    def importable(self) -> bool:
        return self.trusted and not self.problem and not self.already

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "model": self.model,
            "signers": list(self.signers),
            "trusted": self.trusted,
            "problem": self.problem,
            "already": self.already,
            "importable": self.importable,
        }


def plan_import(device: str, found: StickCheckpoint | None, generation: int) -> ActionPlan:
    title = f"Import generation {generation} from the USB stick"
    params = {"device": device, "generation": generation}
    if found is None:
        refusal = f"the stick holds no generation {generation}"
        return ActionPlan("import", title, "", params, commits=True, refusal=refusal)
    if not found.importable:
        why = found.problem or ("already committed on this node" if found.already else "not trusted")
        return ActionPlan("import", title, "", params, commits=True, refusal=why)
    return ActionPlan(
        "import",
        title,
        f"The stick is mounted read-only (nosuid, nodev, noexec). Generation {generation} of {found.model}, signed by "
        f"{', '.join(k[:12] for k in found.signers)}, is copied into the slot that does not hold the newest good "
        "checkpoint, every frame hashed as it is read; it is committed only when complete and verified. The stick is "
        "unmounted afterwards. Restart the model service to serve it (or it is served at the next boot).",
        params,
        commits=True,
    )
