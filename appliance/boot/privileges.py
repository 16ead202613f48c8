"""Who may touch what on a node: the users, and the tmpfiles rules that give every path its owner and mode.

Owns: the user names (``systemd/sysusers.d/appliance.conf`` creates them) and ``render_tmpfiles``
— the one template for the shipped ``systemd/tmpfiles.d/appliance.conf`` (a test checks it equals
``render_tmpfiles(NodeConfig())``) and for a development node made with ``appliance node-init
--users`` (applied with the real ``systemd-tmpfiles``). Does not own creating users or running
anything as them (sysusers, systemd and supervisord do).

The plan (docs/design.md §7.2):

* ``appliance-serve`` (model service): reads the store (group ``appliance``), writes the outbox,
  its report in the run dir and the event log; cannot read the device key, cannot write the store,
  the trust store or the floor, cannot reach supervisord's socket.
* ``appliance-persist`` (persistence watchdog): the only reader of the device key (0400); owns and
  writes the store (its primary group is ``appliance``, so what it writes stays readable by the
  service); reads and empties the outbox.
* ``appliance-channel`` (the fleet channel program, ``appliance channel follow --watch``): parses
  network input (bucket listings, heads, bundles, frames), so it reads the store and the trust store
  (group ``appliance``) but cannot write the store, read the device key or reach supervisord; it
  writes only its state (``/var/lib/appliance-channel``, 0700, heads seen) and its inbox
  (``/var/lib/appliance-channel-inbox``, 2750, group ``appliance``: persist reads it). The
  persistence watchdog imports what the inbox holds, checking everything again (docs/design.md §11.6).
* ``appliance-boot`` (boot and guard): owns the run dir, the boot lock and the floor; writes each
  slot's ``state.json`` (an ACL on the slot roots); the only user that reaches supervisord.
* supervisord stays root (it starts each program as its user) with a minimal capability set.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from appliance.node.config import NodeConfig

GROUP = "appliance"
SERVE, PERSIST, BOOT = "appliance-serve", "appliance-persist", "appliance-boot"
CONSOLE, REPLICATE = "appliance-console", "appliance-replicate"  # their programs: issues 14, 13
CHANNEL = "appliance-channel"  # the fleet channel's network side (issue 13): stages, never writes the store
USERS = (SERVE, PERSIST, BOOT, CONSOLE, REPLICATE, CHANNEL)
CHANNEL_STATE = "/var/lib/appliance-channel"  # the channel heads it has seen (anti-replay)
CHANNEL_INBOX = "/var/lib/appliance-channel-inbox"  # production node.json channel_inbox
STATE_DIRS = {CONSOLE: "/var/lib/appliance-console", REPLICATE: "/var/lib/appliance-replicate", CHANNEL: CHANNEL_STATE}

_HEADER = """\
# Install: /usr/lib/tmpfiles.d/appliance.conf (rendered by appliance.boot.privileges; do not edit).
# Owners and modes of everything the node writes (docs/design.md §7.2; users from
# sysusers.d/appliance.conf). Nothing here is world-readable. /run is a tmpfs: handoff, service
# report, recovery file, boot lock and the supervisord socket vanish on power loss, as they must.
"""


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def render_tmpfiles(config: NodeConfig, node_root: str | None = None) -> str:
    """tmpfiles.d lines for ``config``'s paths; ``node_root``: a development node directory (made
    traversable for group ``appliance``, its key directory for the persist user only)."""
    run, sup = config.run_dir, _parent(config.supervisor_socket)
    log, floor, key = _parent(config.event_log), _parent(config.floor_file), config.signing_key
    inbox = config.channel_inbox or (CHANNEL_INBOX if node_root is None else "")
    rows: list[tuple[str, ...]] = []
    if node_root is not None:
        rows += [
            ("# A development node's directory (appliance node-init --users).",),
            ("z", node_root, "0750", "root", GROUP),
            ("z", _parent(key), "0710", "root", GROUP),
        ]
    rows += [
        ("# Run dir: boot owns it; group appliance may create files (the service's report, the control",),
        ("# socket), setgid keeps them in group appliance, sticky stops anyone replacing another's file.",),
        ("d", run, "3770", BOOT, GROUP),
        ("# The boot lock: only boot may hold it exclusively; persist may read it for its shared hold.",),
        ("f", f"{run}/boot.lock", "0600", BOOT, GROUP),
        ("# m::r: the f line's 0600 leaves the ACL mask empty, which would make persist's entry ineffective.",),
        ("a+", f"{run}/boot.lock", "-", "-", "-", "-", f"u:{PERSIST}:r,m::r"),
        ("# supervisord (root) keeps its socket and pid here; only boot (and root) reach the socket.",),
        ("d", sup, "0710", "root", BOOT),
        ("# Event log: every component appends; supervisord's program logs are root's.",),
        ("d", log, "2770", "root", GROUP),
        ("f", config.event_log, "0660", "root", GROUP),
        ("# Outbox: the service drops exports, persist commits or quarantines them.",),
        ("d", config.outbox, "2770", SERVE, GROUP),
        ("# Anti-rollback floor: boot's alone. Never created here: a missing floor fails closed. The",),
        ("# directory stays root's (first boot writes the floor as root; tmpfiles then hands it to boot).",),
        ("d", floor, "0770", "root", BOOT),
        ("z", config.floor_file, "0600", BOOT, BOOT),
        ("# Store: persist writes, group appliance (service, boot) reads; boot also writes each slot's",),
        ("# state.json (ACL on the slot roots). Z fixes the owner of what first boot wrote as root.",),
        ("d", config.store, "2750", PERSIST, GROUP),
        ("Z", config.store, "-", PERSIST, GROUP),
        ("d", f"{config.store}/A", "2750", PERSIST, GROUP),
        ("d", f"{config.store}/B", "2750", PERSIST, GROUP),
        ("# m::rwx: the d line's chmod to 2750 at every boot resets an implicit mask to r-x (found in the VM tier:",),
        ("# boot could not record slot states); the group entry stays r-x, so group appliance cannot write.",),
        ("a+", f"{config.store}/A", "-", "-", "-", "-", f"u:{BOOT}:rwx,m::rwx"),
        ("a+", f"{config.store}/B", "-", "-", "-", "-", f"u:{BOOT}:rwx,m::rwx"),
        ("# State of the recovery console, of replication and of the fleet channel: each its own user's.",),
        *(("d", path, "0700", user, user) for user, path in STATE_DIRS.items() if node_root is None),
        ("# The fleet channel's inbox: the channel program stages releases, persist (group) reads and imports them.",),
        *((("d", inbox, "2750", CHANNEL, GROUP),) if inbox else ()),
        ("# The device key: readable by the persistence watchdog only.",),
        ("z", key, "0400", PERSIST, GROUP),
    ]
    if config.journal_dir:  # issue 17: the service writes its journal and alone reads its MAC key
        rows += [
            ("# The adaptation journal and its MAC key: the model service's alone (docs/design.md §7.3).",),
            ("d", config.journal_dir, "0700", SERVE, SERVE),
            ("Z", config.journal_dir, "-", SERVE, SERVE),
            ("z", config.journal_key_file(), "0400", SERVE, SERVE),
        ]
    lines = []
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
            continue
        kind, path, mode, user, group, *rest = row
        age, arg = (*rest, "-", "")[:2]
        lines.append(f"{kind:<2} {path:<38} {mode:<4} {user:<17} {group:<17} {age}" + (f"  {arg}" if arg else ""))
    return _HEADER + "\n".join(lines) + "\n"
