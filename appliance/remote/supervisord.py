"""The ``replicate`` program's supervisord section (least privilege: its own user).

Owns: ``render_program`` — the section for ``systemd/supervisord-replicate.conf`` (shipped,
checked by a test to equal ``render_program(production())``; supervisord includes it from
``/etc/appliance/supervisord.d/``) and for development nodes. The program runs as
``appliance-replicate``: it can read the store's committed files (mode 0644 / 0755), its head
key and credentials (0600, owned by it) and write only its state directory; it cannot read the
device signing key, write the store or talk to supervisord's socket.
"""

from __future__ import annotations

from dataclasses import dataclass

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
