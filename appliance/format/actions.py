"""The privileged action channel's rules: what a request may say, who may send it, how often (issue 14).

Owns (pure, no I/O): ``ActionRequest`` and ``parse_request`` (the one JSON line a caller sends;
strict: known action, exact field set, every argument checked against the action's grammar —
a generation is a decimal number, a slot is A or B, a device is a ``/dev/`` node name, a
duration is bounded — so nothing the caller sends becomes an option, a path elsewhere or a
shell word), ``BACKENDS`` (which process serves which action: ``persist`` holds the device key
and owns the store, ``boot`` reaches supervisord, ``mount`` is the root USB helper),
``MountRequest``/``parse_mount`` (the mount helper's requests) and ``RateLimit`` (a token bucket
per caller uid). Does not own sockets (``appliance.console.actiond``) or the actions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.errors import ActionDeniedError

PROTOCOL = 1
MAX_REQUEST_BYTES = 16 * 1024
TECHNICIAN_RE = re.compile(r"^[a-z_][a-z0-9._-]{0,31}$")  # as credentials.NAME_RE
DEVICE_RE = re.compile(r"^/dev/[a-z][a-z0-9]{0,15}(p?[0-9]{1,3})?$")  # /dev/sdb1, /dev/loop7, /dev/mmcblk1p1
GENERATION_RE = re.compile(r"^[1-9][0-9]{0,18}$")
MAX_SCRUB_S = 3600.0

# action -> (backend, argument grammar); each grammar item names one positional argument's kind
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "verify": ("persist", ()),
    "scrub": ("persist", ("seconds",)),
    "slot-reset": ("persist", ("slot",)),
    "rollback": ("persist", ("generation",)),
    "diagnostics-usb": ("persist", ("device",)),
    "usb-scan": ("persist", ("device",)),
    "import": ("persist", ("device", "generation")),
    "restart-service": ("boot", ()),
    "floor": ("boot", ()),  # read-only: the anti-rollback floor, which only boot may read (0600)
}
QUIET = frozenset({"floor"})  # read-only queries: not written to the event log, not rate-limited
BACKENDS = ("persist", "boot")
CHANGES_STATE = frozenset({"scrub", "slot-reset", "rollback", "import", "restart-service", "diagnostics-usb"})


@dataclass(frozen=True)
class ActionRequest:
    action: str
    args: tuple[str, ...]
    technician: str

    @property
    def backend(self) -> str:
        return ACTIONS[self.action][0]

    def to_line(self) -> bytes:
        body = {"v": PROTOCOL, "action": self.action, "args": list(self.args), "technician": self.technician}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _deny(problem: str) -> ActionDeniedError:
    return ActionDeniedError(f"malformed or forged action request: {problem}")


def _check_arg(kind: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise _deny(f"argument of kind {kind} must be a short string")
    ok = {
        "generation": GENERATION_RE.fullmatch(value) is not None,
        "slot": value in ("A", "B"),
        "device": DEVICE_RE.fullmatch(value) is not None,
        "seconds": re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,3})?", value) is not None and 0 < float(value) <= MAX_SCRUB_S,
    }[kind]
    if not ok:
        raise _deny(f"{value!r:.40} is not a valid {kind}")
    return value


def parse_request(raw: bytes, backend: str) -> ActionRequest:
    """The request a caller sent to ``backend``; ``ActionDeniedError`` (84) for anything else."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise _deny("request too large")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _deny(f"not JSON ({exc})") from exc
    if not isinstance(obj, dict) or set(obj) != {"v", "action", "args", "technician"}:
        raise _deny("fields must be exactly v, action, args, technician")
    if obj["v"] != PROTOCOL:
        raise _deny(f"protocol version {str(obj['v'])[:8]!r} is not {PROTOCOL}")
    action, args, technician = obj["action"], obj["args"], obj["technician"]
    if not isinstance(action, str) or action not in ACTIONS:
        raise _deny(f"unknown action {str(action)[:40]!r}")
    if ACTIONS[action][0] != backend:
        raise _deny(f"action {action} is not served here (it belongs to the {ACTIONS[action][0]} side)")
    if not isinstance(technician, str) or not TECHNICIAN_RE.fullmatch(technician):
        raise _deny("technician must be a technician name (a-z 0-9 . _ -, at most 32)")
    grammar = ACTIONS[action][1]
    if not isinstance(args, list) or len(args) != len(grammar):
        raise _deny(f"{action} takes {len(grammar)} argument(s): {', '.join(grammar) or 'none'}")
    return ActionRequest(action, tuple(_check_arg(k, v) for k, v in zip(grammar, args, strict=True)), technician)


# --- the root USB mount helper -------------------------------------------------------------------


@dataclass(frozen=True)
class MountRequest:
    op: str  # "mount" | "unmount"
    device: str = ""
    write: bool = False
    path: str = ""

    def to_line(self) -> bytes:
        return json.dumps(vars(self), separators=(",", ":")).encode() + b"\n"


MOUNT_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,200}/appliance-usb-[A-Za-z0-9_]{6,32}/m$")


def parse_mount(raw: bytes) -> MountRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise _deny("request too large")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _deny(f"not JSON ({exc})") from exc
    if not isinstance(obj, dict) or set(obj) != {"op", "device", "write", "path"}:
        raise _deny("fields must be exactly op, device, write, path")
    op, device, write, path = obj["op"], obj["device"], obj["write"], obj["path"]
    if op == "mount" and isinstance(device, str) and DEVICE_RE.fullmatch(device) and isinstance(write, bool):
        if path != "":
            raise _deny("a mount request names no path: the helper chooses it")
        return MountRequest("mount", device, write)
    if op == "unmount" and isinstance(path, str) and MOUNT_PATH_RE.fullmatch(path) and ".." not in path:
        return MountRequest("unmount", path=path)
    raise _deny("a mount helper request is mount DEVICE [write] or unmount PATH-IT-MADE")


# --- rate limit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``burst`` actions at once, refilled at ``per_minute``; state changes cost 1, reads 0.2."""

    per_minute: float = 6.0
    burst: float = 6.0
    tokens: dict[int, tuple[float, float]] = field(default_factory=dict)  # uid -> (tokens, at)

    def take(self, uid: int, now: float, cost: float) -> tuple[RateLimit, bool]:
        have, at = self.tokens.get(uid, (self.burst, now))
        have = min(self.burst, have + max(0.0, now - at) * self.per_minute / 60.0)
        if have < cost:
            return replace(self, tokens=self.tokens | {uid: (have, now)}), False
        return replace(self, tokens=self.tokens | {uid: (have - cost, now)}), True


def cost_of(action: str) -> float:
    return 1.0 if action in CHANGES_STATE else 0.0 if action in QUIET else 0.2


def describe(request: ActionRequest) -> dict[str, Any]:
    return {"action": request.action, "args": list(request.args), "technician": request.technician}
