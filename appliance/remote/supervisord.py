"""The ``replicate`` and ``channel`` programs' supervisord sections (least privilege).

Owns: ``render_program`` — the section for ``systemd/supervisord-replicate.conf`` (shipped,
checked by a test to equal ``render_program(production())``; supervisord includes it from
``/etc/appliance/supervisord.d/``) and for development nodes. The program runs as
``appliance-replicate``: it can read the store's committed files (mode 0644 / 0755), its head
key and credentials (0600, owned by it) and write only its state directory; it cannot read the
device signing key, write the store or talk to supervisord's socket.

``render_channel`` — the ``channel`` program (``appliance channel follow --watch``), shipped as
``systemd/supervisord-channel.conf`` and rendered for a node only when its ``remote.json`` names a
channel (``channel_section``). It parses network input, so it runs as its own user
``appliance-channel``, which can read the store and the trust store but not write the store or read
the device key: with node.json ``channel_inbox`` (production) it only stages a release in that
inbox, and the persistence watchdog (``appliance-persist``, the store's only writer) imports it
through the verified import path (``appliance.remote.inbox``). Its state (the channel heads it has
seen) is its own directory ``/var/lib/appliance-channel`` (docs/design.md §7.2, §11.6).
``--if-configured`` makes a copy installed on a node whose remote.json names no channel exit 0 at
once; supervisord then leaves it EXITED (``startsecs=0``, ``autorestart=unexpected``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_SECTION = """\
[program:{name}]
; pushes committed checkpoints to object storage: blobs -> bundle -> signed head (docs/design.md §11.4)
command={appliance} replicate --config {config} --remote {remote}
{user}autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=60
redirect_stderr=true
stdout_logfile={log_dir}/{name}.log
"""


@dataclass(frozen=True)
class ReplicateProgram:
    appliance: str
    config: str
    remote: str
    log_dir: str
    user: str = "appliance-replicate"  # "" in development nodes run by an unprivileged developer
    name: str = "replicate"


def production() -> ReplicateProgram:
    return ReplicateProgram(
        appliance="/opt/appliance/venv/bin/appliance",
        config="/etc/appliance/node.json",
        remote="/etc/appliance/remote.json",
        log_dir="/var/log/appliance",
    )


def render_program(p: ReplicateProgram) -> str:
    user = f"user={p.user}\n" if p.user else ""
    return _SECTION.format(
        name=p.name, appliance=p.appliance, config=p.config, remote=p.remote, log_dir=p.log_dir, user=user
    )


_CHANNEL = """\
[program:{name}]
; follows the fleet channel of remote.json: signed head -> missing frames -> inactive slot (docs/design.md §11.6)
command={appliance} channel follow --watch --if-configured --config {config} --remote {remote} --state-dir {state_dir}
{user}autostart=true
autorestart=unexpected
exitcodes=0
startsecs=0
stopsignal=TERM
stopwaitsecs=60
redirect_stderr=true
stdout_logfile={log_dir}/{name}.log
"""


@dataclass(frozen=True)
class ChannelProgram:
    appliance: str
    config: str
    remote: str
    log_dir: str
    state_dir: str = "/var/lib/appliance-channel"
    user: str = "appliance-channel"  # stages only (node.json channel_inbox); "" in development nodes
    name: str = "channel"


def production_channel() -> ChannelProgram:
    return ChannelProgram(
        appliance="/opt/appliance/venv/bin/appliance",
        config="/etc/appliance/node.json",
        remote="/etc/appliance/remote.json",
        log_dir="/var/log/appliance",
    )


def render_channel(p: ChannelProgram) -> str:
    user = f"user={p.user}\n" if p.user else ""
    return _CHANNEL.format(name=p.name, appliance=p.appliance, config=p.config, remote=p.remote,
                           state_dir=p.state_dir, log_dir=p.log_dir, user=user)  # fmt: skip


def channel_section(p: ChannelProgram) -> str:
    """``render_channel(p)`` when ``p.remote`` names a channel, else "" (the node follows none).

    A remote.json that does not load raises its ``ConfigError``: a node whose operator meant it to
    follow a channel must not silently stop following.
    """
    from appliance.remote.config import load_remote

    path = Path(p.remote)
    if not path.exists():
        return ""
    return render_channel(p) if load_remote(path).channel else ""
