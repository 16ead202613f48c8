"""The event catalogue and log: every state change of boot, service and persistence, structured.

Owns: the catalogue (stable ids, names, priorities, message templates, explanations), writing
an event as one JSON line (append-only file shared by all processes) and, when the journal
socket exists, as a journald native-protocol datagram with ``MESSAGE_ID`` and ``APPLIANCE_*``
fields; reading the log back; rendering the journald catalog file. Does not own deciding what
happened (callers emit) — and a broken logger never aborts the operation that emits.

An event id is a 128-bit hex string that never changes once released (journald ``MESSAGE_ID``;
``systemd/appliance.catalog`` explains each one). Consumers (the recovery console, tests,
``appliance events``) match on ``event`` (the name) or ``id``, never on the message text, and
read an event's data from its ``fields`` object (``event_fields``), never from the top level.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_LINE = 256 * 1024


@dataclass(frozen=True)
class EventType:
    name: str
    id: str
    priority: int  # syslog: 2 crit, 3 err, 4 warning, 5 notice, 6 info
    template: str
    explanation: str


_CATALOGUE = (
    EventType("boot.started", "68694b70344a4d3e880a58194a6e5f85", 6,
              "boot {boot_id} started (anti-rollback floor {floor})",
              "The boot supervisor started choosing a checkpoint to serve."),
    EventType("checkpoint.refused", "82ed12d472d94d8fb3e59feabc131c5c", 4,
              "slot {slot} generation {generation} refused: {error}: {problem}",
              "Discovery refused a committed checkpoint (damaged record or manifest, bad signature, other model, "
              "below the anti-rollback floor, missing frames). The next candidate is tried."),
    EventType("slot.attempt", "586ec1252cb04a4a878c38b63adf70b3", 6,
              "trying slot {slot} generation {generation} (attempt {attempts} of {max_attempts})",
              "The boot supervisor counted a boot attempt before starting the restore."),
    EventType("slot.marked_good", "08055e11634748a6988d00380e3ab524", 5,
              "slot {slot} generation {generation} marked GOOD",
              "The checkpoint restored with every frame verified and answered its canary."),
    EventType("slot.marked_bad", "4990430136534f1097897e7137330251", 4,
              "slot {slot} generation {generation} marked BAD: {reason}",
              "The checkpoint will not be booted again; the other slot or an older checkpoint is used."),
    EventType("slot.state_damaged", "2f9bb2174e0a4c35a102a3c2207fb743", 4,
              "slot {slot} state unreadable, treated as UNKNOWN: {reason}",
              "The slot's state.json is missing its parts or corrupt. Its checkpoints are still tried."),
    EventType("slot.unavailable", "7f6d20fb78704d88a234868b21b9a08f", 4, "slot {slot} is unavailable: {reason}",
              "The slot directory is missing or not mounted; only the other slot is used."),
    EventType("fallback.taken", "51ca7f57cf3848e39cd59848d4f7c97a", 4,
              "leaving slot {slot} generation {generation}: {reason}",
              "The candidate failed on the way to serving; the boot supervisor moves to the next one."),
    EventType("restore.finished", "864df9febda54406a96d16bde012b568", 6,
              "restored slot {slot} generation {generation}: {raw_bytes} bytes verified in {seconds}s",
              "The model service restored a checkpoint; every frame matched its signed SHA-256."),
    EventType("restore.failed", "9f7b515c1b11405b828ea220a290e88e", 3,
              "restore of slot {slot} generation {generation} failed: {error}: {problem}",
              "The model service could not restore the checkpoint it was handed and exits."),
    EventType("service.failed", "bcb404501f954e8a9c0ce045465a3799", 3,
              "model service failed while {phase} slot {slot} generation {generation}: {detail}",
              "The model service exited or timed out before its restore was proven good."),
    EventType("canary.passed", "ce638851dcea4ea289b6243f08e4f471", 6,
              "canary passed for slot {slot} generation {generation}: {detail}",
              "The restored service answered the checkpoint's golden input as expected."),
    EventType("canary.failed", "9f5fe9c59d1f40f2a0de48880e2a82a6", 3,
              "canary failed for slot {slot} generation {generation}: {detail}",
              "The restored service answered the golden input wrongly; the checkpoint is marked BAD."),
    EventType("canary.refused_input", "cab03d4ae7034db884fe01ab5f62c289", 3,
              "the model cannot take the canary input of slot {slot} generation {generation}: {detail}",
              "The model service refused the canary input itself (wrong rank or dtype for this model). This is a "
              "model fault, not the checkpoint's: no slot is marked BAD (docs/boot.md, blame table)."),
    EventType("boot.node_fault", "181360a90fe2425bb6347b35a1bff414", 3,
              "slot {slot} generation {generation} is intact but the node cannot use it ({phase}): {reason}",
              "The model or node failed, not the checkpoint: the model service cannot start, the model's tensors "
              "do not fit, or the model cannot take the canary input. No slot is marked BAD and the boot attempt "
              "is given back; boot exits 65 and is retried once a technician fixed the model or node.json."),
    EventType("restore.gpu_fallback", "84f225a404ee40bd8e957df4cf4c7576", 4,
              "GPU restore of slot {slot} generation {generation} failed ({error}: {problem}); decoding on the CPU",
              "nvCOMP or the CUDA device failed during a verified restore (HardwareError). The same checkpoint is "
              "restored again with the CPU decoder; if that fails too, the next checkpoint is tried."),
    EventType("boot.serving", "443baed6af794a5a92b953b482a774b0", 5,
              "serving slot {slot} generation {generation}; boot to serving {total_s}s",
              "Boot finished: the service serves a verified, canary-checked checkpoint."),
    EventType("recovery.entered", "0f34c751f39b427c8f9396e44e3a3bdd", 2, "recovery mode: {reason}",
              "No checkpoint can be served. Nothing is served; a technician imports a signed checkpoint."),
    EventType("floor.raised", "47e94ccaf6764968b3e9cd2fa6daaa92", 5, "anti-rollback floor raised from {old} to {new}",
              "Checkpoints older than the new floor are refused from now on."),
    EventType("floor.damaged", "71e15f5862054fbea43b4c3a0dd098f6", 4,
              "anti-rollback floor unreadable ({reason}); using {floor} derived from the slot states",
              "The floor store could not be read; the floor is rebuilt from the slots' proven generations."),
    EventType("floor.missing", "21e47add6e9f41de9a6aeb878235349d", 4,
              "anti-rollback floor missing ({reason}); using {floor} derived from the slot states",
              "The floor store was deleted or never provisioned. It is rebuilt from the slots' proven generations, "
              "never read as 0, so deleting it does not re-open rollback."),
    EventType("service.crashed", "3853e87c646c4af3800525c387cc0aab", 4,
              "model service died after restoring slot {slot} generation {generation} "
              "(attempt {attempts} of {max_attempts})",
              "supervisord saw the serving model service exit unexpectedly; boot counting continues."),
    EventType("service.admitted", "0fc1afc5c8ea4363adc5e0159e2eb291", 6,
              "model service serves slot {slot} generation {generation} (admitted by {by})",
              "The model service accepts requests."),
    EventType("state.exported", "02a620bb7e0b4ee785669a212e99f08b", 6,
              "state at step {step} exported to {file}; serving paused {pause_s}s",
              "The model service captured its state and dropped it into the outbox."),
    EventType("persist.started", "65b00050d409451ba3d83a589ebced51", 6, "persisting {file} ({raw_bytes} bytes)",
              "The persistence watchdog started committing an export."),
    EventType("persist.committed", "acfa30a9099e41fcbce1de13a28f4e97", 5,
              "committed generation {generation} into slot {slot} in {seconds}s ({written_bytes} bytes written)",
              "A delta checkpoint is durable and signed; it is a boot candidate from now on."),
    EventType("persist.failed", "706b73ad3da44a8b93a8c5c21c3f6788", 3, "persist of {file} failed: {error}: {problem}",
              "The commit did not happen; committed checkpoints are untouched and the export is retried."),
    EventType("persist.deferred", "82614338a75b448f84ddc8b5d1a9a677", 6, "persist deferred: {reason}",
              "Exports wait until the service serves a checkpoint proven GOOD."),
    EventType("outbox.rejected", "77b26a2d91534376aa44ef88d7f65539", 4,
              "outbox file {file} quarantined: {error}: {problem}",
              "An outbox file is truncated, damaged or not a state export; it is moved aside, never committed."),
    EventType("state.unchanged", "090c66a51b014f17b2aec3ae35433547", 6,
              "state unchanged at step {step} ({reason}); nothing exported",
              "The service was asked for an export but its state did not change: no file, no new generation."),
    EventType("journal.replayed", "47521d2270b74c29b10960c109300507", 6,
              "journal replayed {records} steps onto generation {generation} in {seconds}s (last index {last_index})",
              "After the verified restore the model service replayed the adaptation steps journaled since that "
              "checkpoint; the state is the one the service held after its last acknowledged step."),
    EventType("journal.cut", "54368696f40a47d08e4479227eba8a40", 4,
              "journal segment {segment} cut at byte {offset} ({bytes} bytes of torn or corrupt tail set aside)",
              "A power cut tore the last record(s) of a journal segment, or a record failed its checksum. Replay "
              "stopped at the last good record; steps after it were never acknowledged (torn) or are damaged."),
    EventType("journal.stopped", "2aa00d8c2e724bea99b7ce58da0c5009", 3,
              "journal replay stopped at record {index} of {segment} ({kind}): {detail}",
              "A journal record failed its MAC (forged: written without the journal key), belongs to another "
              "lineage or place (foreign), is missing (gap: a step record, a segment, or a step's outcome record "
              "was removed), or replayed differently (diverged). Replay stopped there; the rest is set aside "
              "under JOURNAL/retired/ as evidence. `appliance boot` and `boot-status` say so too."),
    EventType("journal.rotated", "284f328c8f7e4875a12fb944701b9f81", 6,
              "journal trimmed to point {lineage}:{index} ({removed} segments removed, {bytes_left} bytes left)",
              "A committed checkpoint covers these journal segments, so they are no longer needed."),
    EventType("journal.cap_reached", "061164c566774457bc88fef01c4e4876", 4,
              "journal holds {bytes} bytes (cap {max_bytes}): forcing a persist",
              "The journal reached journal_max_bytes; the service exports its state so the watchdog commits a "
              "checkpoint and the journal rotates. Nothing is dropped."),
    EventType("persist.unchanged", "9001d12ba6b142d18773a055bd13ec15", 6,
              "{file} equals generation {generation} (its parent); not committed again",
              "An export whose tensors equal the newest checkpoint's is removed instead of becoming an empty "
              "generation."),
    EventType("control.refused", "57aa452da00e4703b78f3f742460f52b", 4,
              "control channel refused uid {uid} (pid {pid}): {route}: {reason}",
              "A local process tried a state-changing operation it holds no role for (at most one event per "
              "caller and route per minute)."),
    EventType("service.killed", "237d5a39cb994e638a5eb9181f5a005b", 4,
              "model service (pid {pid}) killed by {cause} while serving slot {slot} generation {generation}; "
              "not counted against the checkpoint",
              "The kernel (out of memory, a memory limit) or an operator killed the serving service; supervisord "
              "restarts it. Kills never mark a checkpoint BAD."),
    EventType("node.port_busy", "53d36cc1374849779e985f8d4fb59bdc", 4,
              "service port {host}:{port} is held by another process; waiting up to {wait_s}s with backoff",
              "A node fault, never a checkpoint fault: boot and the service retry until the port is free."),
    EventType("slot.crashes_forgiven", "868f04782cbe4427b94e0c58911cede0", 6,
              "slot {slot} generation {generation} served {healthy_s}s without a crash; "
              "{attempts} earlier crashes forgiven",
              "Crash counts of a GOOD checkpoint decay after a healthy period (crash_decay_s)."),
    EventType("provision.step", "9e64e399ec9a439bb3b2b8e2345adc56", 6, "first boot: {step}: {detail}",
              "First boot completed one provisioning step (docs/image.md section 4). Every step is idempotent."),
    EventType("provision.done", "1c394f3870cf4d589162132ff6736a0a", 5,
              "first boot done: device {device_id}, key {keyid}, factory generation {factory_generation}",
              "The node is provisioned: store, trust, factory checkpoint, device key, floor and settings are in "
              "place. The first-boot units do not run again."),
    EventType("provision.failed", "499cd7383bfc41aca26c53e1e2b4b43d", 3,
              "first boot stopped at {step}: {error}: {problem}",
              "A provisioning step failed. Steps already done stay done; the next boot resumes at this step."),
    EventType("remote.replicated", "9f6690fcc21a4c6294fd95ddb820a85a", 6,
              "replicated generation {generation} of {device}: {uploaded} of {blobs} blobs uploaded "
              "({bytes_uploaded} bytes), {skipped} already there, in {seconds}s",
              "The checkpoint's blobs, bundle and signed head are in the object store (in that order)."),
    EventType("remote.replicate_failed", "6cdb221ed6074f88bba5f7c9b65d4aa8", 4,
              "replication of generation {generation} failed (attempt {attempt}): {error}: {problem}; "
              "retry in {retry_in}s",
              "The upload stopped; the previous head still names a complete checkpoint. It is retried with backoff."),
    EventType("remote.restore_started", "f6f4ff63d4fb4afcb0db3f992afa1094", 5,
              "no valid local checkpoint: restoring from {site} ({endpoint})",
              "Boot found nothing restorable in either slot and asks the configured object store."),
    EventType("remote.restored", "aba1c685eae74f47892eb62b0b8a4b0b", 5,
              "fetched generation {generation} from {site} into slot {slot}: {bytes_from_source} bytes in {seconds}s",
              "A checkpoint from the second site was verified and committed locally; it boots through the canary."),
    EventType("remote.restore_failed", "60061b47c04b475b8108faf923a4106e", 3,
              "restore from {site} failed: {error}: {problem}",
              "The object store was unreachable or offered nothing acceptable; the node enters recovery mode."),
    EventType("channel.staged", "0fa686bd0e5e4bcab9162076500db991", 6,
              "channel {channel} sequence {sequence}: generation {generation} staged for import "
              "({downloaded} of {blobs} blobs downloaded)",
              "The fleet channel program (its own user, no write access to the store) verified the channel's "
              "head and release and put the blobs the node lacks, the bundle and the head into its inbox. The "
              "persistence watchdog imports it, checking everything again (docs/design.md section 11.6)."),
    EventType("channel.restaged", "a05af54e2ff641b981d2970a4ef008bf", 4,
              "channel {channel} sequence {sequence}: the staging of generation {generation} was incomplete or "
              "damaged and is whole again ({repaired} written again)",
              "The channel program found the release it had handed off, which the store has not imported yet, "
              "incomplete or damaged in its inbox (a staged file removed, cut short or altered) and downloaded or "
              "wrote those files again, then handed it off again; the persistence watchdog imports it. If this "
              "repeats, check the disk that holds the inbox (docs/design.md section 11.6)."),
    EventType("channel.import_failed", "9b658d9efdac4a75a40fca4c53ac355e", 4,
              "import of the release staged in {inbox} failed (attempt {attempt}): {error}: {problem}; "
              "retry in {retry_in_s}s",
              "The persistence watchdog could not import the release staged in the channel inbox (storage full or "
              "failing, a staged file missing or damaged: the channel program's next pass stages it again). "
              "Retried with backoff, and at once when the channel program hands the release off again."),
    EventType("channel.import_refused", "1e3a34310b8e43f9ae2407da34feb6be", 3,
              "release staged in {inbox} refused: {error}: {problem}",
              "The persistence watchdog refused the release in the channel inbox (head or bundle not signed by a "
              "release key of the model, another channel or model, below the floor, not newer than the node). "
              "Nothing was written to the store; it is not retried until the channel stages another head."),
    # --- recovery console (issue 14): technicians' logins and actions, each with the technician's name
    EventType("console.started", "5be0f1d3b2c64f4c9d0e6a7f1c2b3a40", 6, "recovery console listening on {listen}",
              "The technicians' recovery console started (TLS on every non-loopback address)."),
    EventType("console.login", "1d2e3f405a6b4c7d8e9fa0b1c2d3e4f5", 5, "technician {technician} logged in from {client}",
              "A technician authenticated to the recovery console."),
    EventType("console.login_failed", "9a8b7c6d5e4f40312a1b0c9d8e7f6a5b", 4,
              "failed console login as {technician} from {client}",
              "A console login failed; repeated failures lock the name and the client out for a while."),
    EventType("console.locked_out", "c3d4e5f60718493a8b9cadbecf001122", 3,
              "console login locked for {key} for {seconds}s after repeated failures",
              "Too many failed console logins: further attempts are refused until the lock ends."),
    EventType("console.technician_set", "2b3c4d5e6f70418293a4b5c6d7e8f901", 5,
              "technician {technician} provisioned ({how})",
              "A technician credential was set (argon2id hash); no default password exists."),
    EventType("console.action", "7e6d5c4b3a2948f7a6b5c4d3e2f1a0b9", 5,
              "technician {technician} ran {action}: {outcome}",
              "A technician action from the recovery console or its CLI verbs; the fields hold its parameters."),
    EventType("console.action_request", "3c9aae1b8eea42edb81400707cac002f", 5,
              "{backend} side accepted {action} for technician {technician} from uid {uid}",
              "The privileged action channel accepted an authenticated, well-formed request (caller by SO_PEERCRED)."),
    EventType("console.action_refused", "86f84990a3e64a739e90700850db46f5", 3,
              "{backend} side refused a request from uid {uid}: {reason}",
              "The privileged action channel refused a caller (wrong uid, forged or malformed request, rate limit)."),
    EventType("console.usb_mount", "bbc2ed513d3443dea8d85a36e46bfcca", 5,
              "USB helper {op} {device} for uid {uid} ({mode})",
              "The root USB mount helper mounted or unmounted a stick (nosuid, nodev, noexec, private directory)."),
)  # fmt: skip

CATALOGUE: Mapping[str, EventType] = {e.name: e for e in _CATALOGUE}


class _Defaults(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return f"<{key}?>"


def render_message(event: EventType, fields: Mapping[str, Any]) -> str:
    return event.template.format_map(_Defaults(fields))


class EventLog:
    """Writes catalogued events for one component (boot, service, persist, guard, cli)."""

    def __init__(self, path: str | Path | None, component: str, journal: str | None = JOURNAL_SOCKET) -> None:
        self.path = Path(path) if path else None
        self.component = component
        self.journal = journal if journal and Path(journal).exists() else None

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        event = CATALOGUE[name]  # an uncatalogued name is a programming error
        now = time.time()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "ts_unix": round(now, 6),
            "id": event.id,
            "event": name,
            "priority": event.priority,
            "component": self.component,
            "pid": os.getpid(),
            "message": render_message(event, fields),
            "fields": fields,
        }
        line = _line(record)
        if len(line.encode("utf-8")) > MAX_LINE:
            record = _truncated(record)
            line = _line(record)
        self._append(line)
        self._journal(event, record)
        return record

    def _append(self, line: str) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, line.encode("utf-8"))  # one write (≤ MAX_LINE, newline included): no interleaving
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            print(f"appliance: cannot write event log {self.path}: {exc}", file=sys.stderr)

    def _journal(self, event: EventType, record: dict[str, Any]) -> None:
        if self.journal is None:
            return
        fields: dict[str, Any] = {
            "MESSAGE": record["message"],
            "MESSAGE_ID": event.id,
            "PRIORITY": event.priority,
            "SYSLOG_IDENTIFIER": f"appliance-{self.component}",
            "APPLIANCE_EVENT": event.name,
        }
        for key, value in record["fields"].items():
            fields["APPLIANCE_" + "".join(c if c.isalnum() else "_" for c in key.upper())] = value
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(journal_datagram(fields), self.journal)


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str, separators=(",", ":")) + "\n"


FIELD_MAX = 4096  # characters kept of each string in an oversized event


def _truncated(record: dict[str, Any]) -> dict[str, Any]:
    """An event too long for one line, with its fields cut (never its line): still one complete JSON line.

    Each string anywhere in ``fields`` (and the message) keeps its first ``FIELD_MAX`` characters
    and says how many were dropped; if that is still too long, the fields are replaced by a note.
    """
    cut = dict(record)
    cut["fields"] = _cut(record["fields"])
    cut["message"] = _cut(record["message"])
    cut["truncated"] = True
    if len(_line(cut).encode("utf-8")) > MAX_LINE:
        cut["fields"] = {"truncated": f"fields of {len(_line(record))} characters dropped"}
    return cut


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= FIELD_MAX else value[:FIELD_MAX] + f"...[{len(value) - FIELD_MAX} chars cut]"
    if isinstance(value, dict):
        return {str(k)[:FIELD_MAX]: _cut(v) for k, v in list(value.items())[:256]}
    if isinstance(value, list | tuple):
        return [_cut(v) for v in list(value)[:256]]
    return value if isinstance(value, int | float | bool) or value is None else _cut(str(value))


def journal_datagram(fields: Mapping[str, Any]) -> bytes:
    """journald's native protocol: ``KEY=value`` lines; values with newlines length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        data = text.encode("utf-8")
        if b"\n" in data:
            out += key.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


def event_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """An event's own data: the log keeps it under ``fields``, never at the top level of the record.

    The top level holds only the envelope (``ts``, ``ts_unix``, ``id``, ``event``, ``priority``,
    ``component``, ``pid``, ``message``). Every reader of the log takes event data from here: a
    record without ``fields`` (a planted or foreign line) has none, which is never fatal.
    """
    fields = record.get("fields")
    return fields if isinstance(fields, dict) else {}


def read_events(path: str | Path, names: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Every complete event in the log (a torn last line is skipped), optionally filtered by name."""
    return list(iter_events(path, names))


def iter_events(path: str | Path, names: frozenset[str] | None = None) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return
    for line in lines:
        if not line.endswith("\n"):
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a damaged or planted line is skipped, never fatal
            continue
        if isinstance(record, dict) and (names is None or record.get("event") in names):
            yield record


def render_catalog() -> str:
    """The journald catalog (``journalctl --update-catalog``) for every event id."""
    parts = []
    for e in _CATALOGUE:
        parts.append(
            f"-- {e.id}\nSubject: {e.name}: {e.template}\nDefined-By: appliance\n"
            f"Support: docs/boot.md\n\n{e.explanation}\n"
        )
    return "\n".join(parts)
