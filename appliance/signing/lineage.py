"""Key roles and lineage: who may sign which checkpoint (docs/design.md §5.4).

Owns: ``authorize`` — given a manifest, the key ids whose signatures verified and the trust
store, decide whether enough of those keys may sign *this* checkpoint, and report its
provenance (signer role, release base); ``lineage_for_commit`` — the lineage a new commit
must carry when a device key signs it. Does not own signature checks (``verify``) or the
lineage wire form (``appliance.format.lineage``). No file I/O: callers pass bytes, so the
import path (USB, S3, fleet) uses the same rules as boot and restore.

Rules, per signing key:
* unrestricted (role-less, v1 trust stores): may sign any checkpoint, as before roles existed;
* ``release``: may sign checkpoints of the model ids it lists (else ``RoleError``, 45);
* ``device``: only the key bound to *this node's* device id counts when the node knows it
  (``TrustStore.device``; another device's key: ``ForeignDeviceKeyError``, 77); it may sign a
  checkpoint only if its ``lineage`` names this key's device id and
  embeds a bundle that verifies with release (or unrestricted) keys alone, for the same model,
  an older generation, and the same tensor names, dtypes and shapes (else ``LineageError``, 44).
At least ``threshold`` distinct signers must be authorised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError, ForeignDeviceKeyError, LineageError, RoleError
from appliance.format.digest import Digest
from appliance.format.lineage import Lineage, layout_difference, layout_of
from appliance.format.manifest import Manifest
from appliance.limits import DEFAULT_LIMITS, Limits
from appliance.signing.trust import DEVICE, TrustedKey, TrustStore

UNRESTRICTED = "unrestricted"


@dataclass(frozen=True)
class ReleaseBase:
    """The release-signed checkpoint a generation descends from (itself, when release-signed)."""

    generation: int
    manifest_digest: Digest
    keyids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "manifest_digest": self.manifest_digest.hex, "keyids": list(self.keyids)}


@dataclass(frozen=True)
class Authorization:
    role: str  # "release" | "device" | "unrestricted": the strongest role among the authorised signers
    release_base: ReleaseBase
    device: str | None = None  # device id, for device-signed checkpoints

    def to_dict(self) -> dict[str, Any]:
        return {"signer_role": self.role, "release_base": self.release_base.to_dict(), "device": self.device}


def authorize(
    manifest: Manifest,
    keyids: Sequence[str],
    trust: TrustStore,
    *,
    release_only: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Authorization:
    """Authorization of ``manifest`` signed by ``keyids`` (signatures already verified), or raise.

    ``release_only``: device keys do not count (used for the release base itself).
    Raises ``RoleError`` or ``LineageError`` when fewer than ``trust.threshold`` signers may sign it.
    """
    entries = [e for e in (trust.entry(k) for k in sorted(set(keyids))) if e is not None]
    release = [e for e in entries if e.may_sign_release_of(manifest.model)]
    devices = [e for e in entries if e.role == DEVICE] if not release_only else []
    if len(release) >= trust.threshold:
        role = UNRESTRICTED if all(e.role is None for e in release) else "release"
        base = ReleaseBase(manifest.generation, manifest.digest(), tuple(e.keyid for e in release))
        return Authorization(role, base)
    if not devices or release_only:
        _refuse_roles(manifest, entries, trust.threshold, release_only)
    devices = _own_devices(manifest, devices, trust.device)
    base = _release_base(manifest, trust, limits)
    assert manifest.lineage is not None
    bound = [e for e in devices if e.device == manifest.lineage.device]
    if len(release) + len(bound) < trust.threshold:
        raise LineageError(
            f"checkpoint generation {manifest.generation} names device {manifest.lineage.device!r:.80}, but its "
            f"device key(s) are bound to {sorted(str(e.device) for e in devices)!r:.160}"
        )
    return Authorization(DEVICE, base, manifest.lineage.device)


def _own_devices(manifest: Manifest, devices: list[TrustedKey], own: str | None) -> list[TrustedKey]:
    """The device keys bound to this node (all of them when the node's id is not known: library use)."""
    if own is None:
        return devices
    mine = [e for e in devices if e.device == own]
    if not mine:
        others = sorted(str(e.device) for e in devices)
        raise ForeignDeviceKeyError(
            f"checkpoint generation {manifest.generation} is signed by the device key(s) of {others!r:.160}, "
            f"not by this node's own device key ({own!r:.80}); a device key signs only for its own device"
        )
    return mine


def _refuse_roles(manifest: Manifest, entries: list[TrustedKey], threshold: int, release_only: bool) -> None:
    what = f"checkpoint generation {manifest.generation} of model {manifest.model!r:.80}"
    if release_only and any(e.role == DEVICE for e in entries):
        raise LineageError(f"the release base ({what}) is signed by a device key, not a release key")
    lists = sorted({m for e in entries for m in e.models})
    raise RoleError(
        f"{what} needs {threshold} signature(s) by keys that may sign it; its release signers may sign only "
        f"{lists!r:.200}"
    )


def _release_base(manifest: Manifest, trust: TrustStore, limits: Limits) -> ReleaseBase:
    from appliance.signing.verify import verify_bundle  # verify calls authorize: import at use

    what = f"device-signed checkpoint generation {manifest.generation}"
    if manifest.lineage is None:
        raise LineageError(f"{what} carries no lineage: a device key may sign only descendants of a release")
    try:
        base = verify_bundle(
            manifest.lineage.release_bundle, trust, expected_model=manifest.model, limits=limits, release_only=True
        )
    except LineageError:
        raise
    except ApplianceError as exc:
        raise LineageError(f"{what}: its release base does not verify ({type(exc).__name__}: {exc.problem})") from exc
    if base.manifest.generation >= manifest.generation:
        raise LineageError(f"{what}: its release base generation {base.manifest.generation} is not older")
    diff = layout_difference(layout_of(base.manifest.tensors), layout_of(manifest.tensors))
    if diff is not None:
        raise LineageError(f"{what} changes the release's tensor layout: {diff}")
    return ReleaseBase(base.manifest.generation, base.manifest.digest(), base.keyids)


def lineage_for_commit(
    signers: Sequence[str], trust: TrustStore, parent: tuple[bytes, Authorization, Manifest] | None
) -> Lineage | None:
    """The lineage a new checkpoint signed by ``signers`` carries (``None`` unless a device key signs).

    ``parent``: the parent's bundle bytes, authorization and manifest. Raises ``LineageError`` when
    a device key would sign a checkpoint with no release-signed ancestor, ``RoleError`` when
    the device keys are bound to different devices.
    """
    devices = {e.device for e in (trust.entry(k) for k in signers) if e is not None and e.role == DEVICE}
    if not devices:
        return None
    if len(devices) > 1:
        raise RoleError(f"the signing keys are device keys of different devices: {sorted(str(d) for d in devices)}")
    device = str(devices.pop())
    if parent is None:
        raise LineageError(
            "a device key may sign only a checkpoint derived from a release-signed one, and this store has none",
            remedy="install a release-signed checkpoint first (signed by a release key listing this model)",
        )
    bundle, authorization, manifest = parent
    if authorization.role != DEVICE:
        return Lineage(bundle, device)
    assert manifest.lineage is not None
    return Lineage(manifest.lineage.release_bundle, device)
