"""The one exception tree of `appliance`, split by who must act.

Owns: every error class, its stable CLI exit code and its default remedy text.
Does not own: deciding *when* to raise (callers do) or printing (``appliance.cli`` does).

Groups (exit-code ranges are a public contract, listed in the README):

* ``UserError`` (10-29): the operator gave bad input or configuration; fix it and retry.
* ``IntegrityError`` (30-49): stored or supplied data is damaged, forged or not for this
  node; the system falls back to another checkpoint, the operator re-imports or repairs.
* ``NoValidCheckpointError`` (50): nothing restorable is left; the node goes to recovery mode.
* Key group (55-58): encryption at rest (docs/design.md §14). A key that cannot be obtained is
  a *node* fault: no checkpoint is blamed or marked, boot enters recovery mode with reason
  "key unavailable". A frame that fails authentication after its digest matched is forged (58).
* ``StorageError`` (60-69): the environment failed (disk full, I/O error, lock held,
  slot not mounted); fix the device and retry. Committed data was not touched.
* ``HardwareError`` (70-79): an accelerator path failed; the CPU path is used instead.
* ``ProvisioningError`` (80-81): node provisioning (first boot) could not finish: a checkpoint
  partition, the provisioning file or the device's key store. Nothing already provisioned is
  undone; the first-boot unit completes the remaining steps on the next boot once fixed.
* Console group (82-86): the technicians' recovery console refused access or an action, or its
  privileged side is unreachable (84-86). Codes 77 (foreign device key) and 78 (device identity)
  were allocated where the integrity and user ranges were full, as were 87 (bucket retention refused)
and 90 (the fleet channel's inbox has the wrong owner or mode).

Codes 0 (success), 1 (completed with warnings) and 2 (command-line syntax) are set by the CLI.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class: a message that names the problem and a remedy that names the fix."""

    exit_code = 3
    remedy = "see the message above"
    written: tuple[str, ...] = ()  # appliance.api.load(into=...): destination tensors written before the failure

    def __init__(self, problem: str, *, remedy: str | None = None) -> None:
        self.problem = problem
        if remedy is not None:
            self.remedy = remedy
        super().__init__(f"{problem} (remedy: {self.remedy})")

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "problem": self.problem,
            "remedy": self.remedy,
        }


# --- the operator must act -------------------------------------------------------------


class UserError(ApplianceError):
    exit_code = 10
    # Raised from the CLI and from the Python API alike: the problem names the option or argument.
    remedy = "correct the argument named above and retry"


class UsageError(UserError):
    exit_code = 10


class KeyFileError(UserError):
    exit_code = 11
    remedy = (
        "pass a key file written by `appliance keygen KEYFILE`: KEYFILE (private) to sign, KEYFILE.pub to "
        "trust or verify; Ed25519 or ECDSA P-256"
    )


class KeyPermissionError(KeyFileError):
    exit_code = 23
    remedy = "make the private key file readable by the signing user only (chmod 0400, chown to that user)"


class SourceFormatError(UserError):
    exit_code = 12
    remedy = "pass a valid .safetensors file or a model directory with *.safetensors shards"


class StoreNotFoundError(UserError):
    exit_code = 13
    remedy = "create the store first with `appliance init ROOT --trust PUBKEY`"


class StoreExistsError(UserError):
    exit_code = 14
    remedy = "choose an empty directory, or use the existing store"


class TrustStoreError(UserError):
    exit_code = 15
    remedy = "re-create the trust store with `appliance init` or `appliance trust add`"


class TensorMismatchError(UserError):
    exit_code = 16
    remedy = "load into tensors whose names, dtypes and shapes match the checkpoint"


class CheckpointNotFoundError(UserError):
    exit_code = 17
    remedy = "list the committed generations with `appliance log ROOT`"


class ConfigError(UserError):
    exit_code = 18
    remedy = "fix the store configuration (store.json) or re-initialise the store"


class TrustLocationError(ConfigError):
    exit_code = 24
    remedy = (
        'set "trust" in node.json to a trust store on the read-only rootfs (/etc/appliance/trust.json), '
        "outside the store and its slot partitions"
    )


class CanaryInputError(UserError):
    exit_code = 19
    remedy = "give the model a canary_input() it can run (same rank, dtype and device as real inputs)"


class SourceChangedError(SourceFormatError):
    exit_code = 20
    remedy = "the source changed while it was committed; nothing was committed, commit it again once it is stable"


class AliasingConflictError(TensorMismatchError):
    exit_code = 21
    remedy = "untie the destination tensors, or load into a model whose tied tensors were saved equal"


class ControlDeniedError(UserError):
    exit_code = 22
    remedy = (
        "the control channel admits only root, the service's own user and the users named in node.json "
        "(control_users, adapt_users); run the command as one of them"
    )


class ReservedNameError(UserError):
    exit_code = 25
    remedy = (
        "rename it: `__metadata__` is safetensors' header key, not a tensor name, and the `appliance.` "
        "header-metadata namespace belongs to appliance"
    )


class AssetError(UserError):
    exit_code = 26
    remedy = (
        "fix the model directory: files must be regular files (or links to files inside it) within the size "
        "caps; copy linked files in with `cp -rL` or remove the file"
    )


class VendorTrustError(UserError):
    exit_code = 27
    remedy = "fix the vendor trust (`appliance vendor ROOT add NAME --key PUB.pem | --cert-chain CHAIN.pem`)"


class ModelSigningUnavailableError(UserError):
    exit_code = 28
    remedy = "install the OpenSSF model-signing support: pip install 'appliance[model-signing]'"


class OlderCheckpointError(UserError):
    exit_code = 29
    remedy = "nothing was changed; import a checkpoint newer than the node's (`appliance log ROOT`)"


class ModelLayoutError(UserError):
    """A model file or directory whose tensors differ from the store's newest checkpoint (issue 11).

    Code 74: the 10-29 range is full; 74-76 were reserved for issue 11's gaps.
    """

    exit_code = 74
    remedy = (
        "nothing was committed: commit this model into its own store (`appliance init`), or, if the store's "
        "model really changes (new architecture, resized vocabulary, a subset), commit with --new-layout "
        "(API: new_layout=True)"
    )


# --- data is damaged, forged or not for this node --------------------------------------


class IntegrityError(ApplianceError):
    exit_code = 30
    remedy = "the other slot or an older checkpoint is used; re-import a good checkpoint"


class SignatureError(IntegrityError):
    exit_code = 31
    remedy = "refuse this checkpoint; re-sign it with a trusted key or import a signed one"


class UntrustedKeyError(SignatureError):
    exit_code = 32
    remedy = "add the signer's public key with `appliance trust add` if it is legitimate"


class RevokedKeyError(SignatureError):
    exit_code = 33
    remedy = "the signing key was revoked; re-sign the checkpoint with a current key"


class ManifestError(IntegrityError):
    exit_code = 34
    remedy = "this manifest or commit record is malformed; the checkpoint is not used"


class CanaryNotRecordableError(ManifestError):
    """A canary boot could not check: ``part`` ("input" | "answer") has a rank out of range or, with
    ``nonfinite``, holds NaN or Infinity. Callers tell a damaged state from a bad canary by these
    fields, never by the message text.

    Raised only by ``appliance.format.canary.check_recordable``; no command exits 59: ``seed`` and every
    export (``appliance.service.export``) report it as ``CanaryInputError`` (19), or as ``ExportFileError``
    (41) when the model's state itself holds NaN or Infinity."""

    exit_code = 59
    remedy = "fix the model's canary_input(); a non-finite answer means the served state is damaged: restore a good one"

    def __init__(self, problem: str, *, part: str, nonfinite: bool, remedy: str | None = None) -> None:
        super().__init__(problem, remedy=remedy)
        self.part, self.nonfinite = part, nonfinite


class FrameError(IntegrityError):
    exit_code = 35
    remedy = "run `appliance verify ROOT`; the other slot is used, `appliance scrub` repairs"


class FrameMissingError(FrameError):
    exit_code = 36


class LimitExceededError(IntegrityError):
    exit_code = 37
    remedy = "the input exceeds a safety cap (see appliance/limits.py) and is refused"


class CompatibilityError(IntegrityError):
    exit_code = 38
    remedy = "this checkpoint is for another model; import one whose model id matches the store"


class RollbackError(IntegrityError):
    exit_code = 39
    remedy = "the checkpoint is older than the anti-rollback floor; install a newer one"


class UnsafePathError(IntegrityError):
    exit_code = 40
    remedy = "remove the planted entry; store files are never links (run `appliance verify`)"


class ExportFileError(IntegrityError):
    exit_code = 41
    remedy = "the file was moved to the outbox's quarantine/; the service's next export is committed instead"


class LineageError(IntegrityError):
    exit_code = 44
    remedy = (
        "a device key may sign only descendants of a release-signed checkpoint of the same model and tensor "
        "layout; install a release-signed checkpoint, or have a release key sign this one"
    )


class RoleError(IntegrityError):
    exit_code = 45
    remedy = "sign with a key whose role allows this checkpoint (a release key listing the model, or the device's key)"


class ForeignDeviceKeyError(LineageError):
    """A device-role signature by a key bound to *another* device (issue 10: the node knows its own id).

    Code 77 was handed to this class by the session's allocation (the integrity range 30-49 is full).
    """

    exit_code = 77
    remedy = (
        "this node accepts device-role signatures only from its own device key (node.json device_id or "
        "/etc/appliance/device.json); have a release key sign the checkpoint, or import it on the device it is for"
    )


class ChannelRoleError(RoleError):
    exit_code = 71
    remedy = (
        "a fleet channel carries only heads and checkpoints signed by a release key of the model in the node's "
        "trust store: publish with the release key (`appliance trust ROOT role KEYID --role release --model M` "
        "migrates a role-less key; docs/design.md §11.6)"
    )


class CanaryFailedError(IntegrityError):
    exit_code = 42
    remedy = "the restored checkpoint answered its canary wrongly; the slot is marked BAD and the other one used"


class UnauthenticExportError(IntegrityError):
    exit_code = 43
    remedy = (
        "the file was moved to the outbox's quarantine/: the running service did not produce it for the "
        "checkpoint boot handed it; nothing was signed"
    )


class AssetIntegrityError(IntegrityError):
    exit_code = 46
    remedy = "the checkpoint's asset does not match its signed SHA-256; the other slot or an older checkpoint is used"


class VendorSignatureError(IntegrityError):
    exit_code = 47
    remedy = (
        "do not import this directory: its files or signature do not match what the vendor signed (altered, "
        "damaged, or signed by a key this store does not trust); obtain the model again from the vendor"
    )


class PartialCheckpointError(IntegrityError):
    exit_code = 48
    remedy = (
        "the source lacks blobs its bundle names or holds them with the wrong size (export cut short or damaged): "
        "re-run the export, then import"
    )


class HeadError(IntegrityError):
    exit_code = 49
    remedy = (
        "the object store's head record is forged, replayed, malformed or for another node; nothing was "
        "changed: check the bucket's access policy and re-publish or re-replicate"
    )


class NoValidCheckpointError(ApplianceError):
    exit_code = 50
    remedy = (
        "recovery mode: import a signed checkpoint with `appliance import ROOT SRC` (a USB stick or directory "
        "written by `appliance export`), or commit one with `appliance commit ROOT MODEL --key KEY` "
        "(`appliance seed --config node.json --force` for the model's fresh state), then run "
        "`appliance boot --config node.json`; `appliance verify ROOT` names what failed"
    )


# --- key group (55-58): encryption at rest ---------------------------------------------------


class KeyUnavailableError(ApplianceError):
    """The store's key-encryption key cannot be obtained: a node fault, never a checkpoint's."""

    exit_code = 55
    remedy = (
        "node fault, no checkpoint was blamed: make the store's key provider available (the KEK file of mode "
        "0400, the systemd credential, the OP-TEE/TPM key; `appliance key status ROOT` names it) and retry"
    )


class WrongKeyError(KeyUnavailableError):
    """A key was obtained but it is not this store's (or the keyring holding the data key is damaged)."""

    exit_code = 56
    remedy = (
        "the key provider returned a key-encryption key this store was not wrapped under: restore the right KEK "
        "(or the keyring's copy); no checkpoint was blamed"
    )


class CryptoErasedError(KeyUnavailableError):
    """The store was crypto-erased: every wrapped data key is destroyed, its checkpoints are unreadable."""

    exit_code = 57
    remedy = (
        "the checkpoints of this store were destroyed on purpose (`appliance erase --crypto`); provision the node "
        "again (`appliance init ROOT --encrypt`, then import or commit a checkpoint)"
    )


class FrameAuthenticationError(FrameError):
    """A sealed frame's stored SHA-256 matched but AES-GCM authentication failed: forged without the key."""

    exit_code = 58
    remedy = (
        "the frame was made by someone without this store's data key (a forgery under a valid signature) or "
        "sealed for another record; the checkpoint falls back; re-import it from a trusted source"
    )


# --- the environment failed --------------------------------------------------------------


class StorageError(ApplianceError):
    exit_code = 60
    remedy = "check the storage device; committed checkpoints were not modified"


class StorageFullError(StorageError):
    exit_code = 61
    remedy = "free space on the slot's file system (`appliance gc ROOT`) and retry"


class StorageIOError(StorageError):
    exit_code = 62
    remedy = "the device reported an I/O error; check dmesg and the storage medium"


class LockedError(StorageError):
    exit_code = 63
    remedy = "another appliance process is writing this store; wait for it and retry"


class SlotUnavailableError(StorageError):
    exit_code = 64
    remedy = "mount the slot's partition (see systemd/*.mount) and retry"


class ServiceError(StorageError):
    exit_code = 65
    remedy = "check the model service's log (supervisorctl tail model) and the node configuration"


class SupervisorUnavailableError(StorageError):
    exit_code = 66
    remedy = "start supervisord (systemctl start appliance-supervisor) and retry"


class ModelFaultError(ServiceError):
    exit_code = 67
    remedy = (
        "the checkpoint is intact; the model code or node.json does not fit it (tensor shapes, canary input): "
        "fix the model factory and run `appliance boot` again"
    )


class ControlChannelError(StorageError):
    exit_code = 68
    remedy = (
        "the model service's control socket (RUN/control.sock) is missing, not the service's, or not "
        "answering; check that the service runs (supervisorctl status model)"
    )


class SourceUnavailableError(StorageError):
    exit_code = 69
    remedy = "reconnect the source (USB stick, network, object store) and re-run: the transfer resumes"


class RemoteServerError(SourceUnavailableError):
    exit_code = 72
    remedy = (
        "the object store answered with server errors (5xx, SlowDown) or stalled past the timeouts on every "
        "retry; nothing was lost: the next pass retries with backoff and resumes. Check the server's health"
    )


class HardwareError(ApplianceError):
    exit_code = 70
    remedy = "the CPU path is used instead; check the GPU driver and nvCOMP installation"


# --- node provisioning (first boot) -------------------------------------------------------


class ProvisioningError(ApplianceError):
    """First boot could not complete a step (partitions, store, factory checkpoint, provisioning file).

    Every step is idempotent: after the cause is fixed the next boot (or ``appliance firstboot``)
    resumes where this one stopped. A partition that already holds a file system is never formatted.
    """

    exit_code = 80
    remedy = "fix the cause named above, then reboot (or run `appliance firstboot`): provisioning resumes"


class KeyProviderError(ProvisioningError):
    """The device's key store (file, OP-TEE, TPM) cannot create, find or read a key."""

    exit_code = 81
    remedy = "check the key provider (node.json key_provider; default: key files of mode 0400 in /etc/appliance)"


# --- console group (82-83): the recovery console refused a technician --------------------------
# Owned by the recovery console (appliance.console, issue 14). The old ranges are full; these two
# codes are reserved for it. Both mean "nothing was changed".


class ConsoleAccessError(ApplianceError):
    exit_code = 82
    remedy = (
        "provision a technician on the node (`appliance console passwd NAME`) or use the one-time setup code "
        "shown on the node's local console; after repeated failures wait for the lockout to end"
    )


class ActionRefusedError(ApplianceError):
    exit_code = 83
    remedy = "the action's preconditions are not met (see the problem); choose another target or fix the cause first"


# --- adaptation journal (51-54): zero-loss adaptation (issue 17) -------------------------------
# Raised by the model service around its journal of adaptation steps (appliance.journal).


class JournalForgedError(IntegrityError):
    """A journal record failed its MAC (someone without the journal key wrote it), or ``journal check`` found
    records removed or spliced (a gap, a foreign record): boot's replay stops there."""

    exit_code = 51
    remedy = (
        "the journal directory was written by someone without the journal key: the steps before the forged "
        "record were replayed, the rest set aside under JOURNAL/retired/; check who can write the journal"
    )


class JournalKeyError(UserError):
    """The journal MAC key is missing, damaged, or readable by others (same rules as the device key)."""

    exit_code = 52
    remedy = (
        "create the journal key as the service's user (`appliance journal key --config node.json`; mode 0400, "
        "owned by appliance-serve) or fix its mode and owner"
    )


class JournalIOError(StorageError):
    """The journal could not be written or synced: the step is not acknowledged."""

    exit_code = 53
    remedy = "check the journal's storage (journal_dir in node.json); unacknowledged steps must be resent"


class JournalFullError(StorageError):
    """The journal reached twice its cap without a persist: adaptation waits instead of dropping records."""

    exit_code = 54
    remedy = (
        "let the persistence watchdog commit a checkpoint (check `appliance report` and the persist log); "
        "the journal rotates at the commit and adaptation resumes"
    )


class ActionDeniedError(ConsoleAccessError):
    """The privileged action channel refused a caller: wrong uid, forged or malformed request."""

    exit_code = 84
    remedy = (
        "only the recovery console's user (appliance-console) and root may ask for technician actions, with a "
        "well-formed request; run the action from the console or as root with `appliance tech`"
    )


class ActionRateLimitedError(ActionDeniedError):
    exit_code = 85
    remedy = "too many privileged actions in a short time; wait a minute and retry"


class ActionChannelError(StorageError):
    """The privileged side of the console (actions socket or USB mount helper) cannot be reached."""

    exit_code = 86
    remedy = (
        "the privileged action program is not running or its socket is missing (supervisorctl status actions "
        "usbmount); nothing was changed"
    )


class DeviceIdentityError(ConfigError):
    """This node's device id is unknown or unreadable where the trust store needs it."""

    exit_code = 78
    remedy = "set device_id in node.json, or let first boot write /etc/appliance/device.json"


class PruneRefusedError(UserError):
    """Bucket retention (``appliance remote prune``) refused to delete anything it cannot prove unneeded.

    Code 87: the user range (10-29) is full. Raised before any deletion when the replica's state is not
    established (no verified head, the head's bundle missing or not verifying, the floor unreadable, an
    upload pending); the bucket is left exactly as it was. Each raise names its own remedy; credential,
    bucket and endpoint failures are never this error (they keep ``ConfigError`` 18 /
    ``SourceUnavailableError`` 69, as ``remote pull`` reports them).
    """

    exit_code = 87
    remedy = (
        "nothing was deleted: prune again once `appliance remote status` shows no pending upload and a bucket head "
        "(a missing or damaged floor is rebuilt by `appliance boot`; an unreadable one needs root)"
    )


class FloorUnavailableError(UserError):
    """The anti-rollback floor (node.json ``floor_file`` / ``floor_provider``) is missing, damaged or not
    readable by this user, so a command that must compare against it cannot run (``remote pull``).

    Code 88: the user range (10-29) is full. Never read as floor 0 (that would re-open rollback, docs/boot.md
    §4); nothing was changed. The remedy names the cause: boot rebuilds a missing or damaged floor from the
    slot states; an unreadable one needs root.
    """

    exit_code = 88
    remedy = (
        "nothing was changed: a missing or damaged floor is rebuilt by `appliance boot --config NODE.json`; an "
        "unreadable one needs root (the floor is boot's)"
    )


class InboxPermissionError(UserError):
    """The fleet channel's inbox (node.json ``channel_inbox``) has an owner or mode that lets someone other
    than the channel's user write it, or holds a symbolic link or a special file (docs/design.md §7.2).

    Code 90: the user range (10-29) is full. The persistence watchdog imports nothing from such an inbox
    (``channel.import_refused`` with this remedy) and goes on persisting local state; the problem names
    the path, its owner and mode, and the owner and mode expected.
    """

    exit_code = 90
    remedy = (
        "give the inbox to the channel's user, writable by it alone: chown -R appliance-channel INBOX && "
        "chmod -R g-w,o-rwx INBOX (tmpfiles: d INBOX 2750 appliance-channel appliance)"
    )


def all_error_classes() -> list[type[ApplianceError]]:
    """Every error class, base first; used to document and test the exit-code table."""
    found: list[type[ApplianceError]] = []
    pending: list[type[ApplianceError]] = [ApplianceError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
