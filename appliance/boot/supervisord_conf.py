"""The supervisord configuration of a node: the model service, the persistence watchdog, the guard.

Owns: ``render`` — the one template for both the shipped production file
(``systemd/supervisord.conf``, checked by a test to equal ``render(production())``) and the
development/test nodes ``appliance node-init`` creates. Does not own starting supervisord
(systemd's ``appliance-supervisor.service``, or the test harness).

Program policy: the model service is autostarted as a *standby* (docs/boot.md §14: it imports
torch and builds the model, then waits for boot's handoff; it restores and serves nothing
before), so its start overlaps boot's; boot keeps it for the first trial, or stops it and starts
it afresh. supervisord restarts it only after an unexpected exit; the
persistence watchdog always runs (it commits only while a GOOD checkpoint is served, and its
loop feeds systemd's watchdog); the guard listens for the service's EXITED/FATAL events.

Privileges (``users``): supervisord stays root so it can start each program as its own user
(``appliance.boot.privileges``): the service as ``appliance-serve``, the watchdog as
``appliance-persist``, the guard as ``appliance-boot``; its socket belongs to ``appliance-boot``
(mode 0700), so only boot (and root) can start or stop programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.boot.privileges import BOOT, PERSIST, SERVE

_TEMPLATE = """\
; supervisord configuration for an appliance node (rendered by appliance.boot.supervisord_conf).
; systemd starts supervisord (appliance-supervisor.service); the model service starts as a standby
; and restores only what `appliance boot` hands it (docs/boot.md §14).

[unix_http_server]
file={socket}
chmod={socket_mode}{socket_owner}

[supervisord]
nodaemon=true
umask=027
logfile={log_dir}/supervisord.log
pidfile={pidfile}
childlogdir={log_dir}
{environment}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}

[program:{service}]
; restore happens inside this process (no CUDA memory IPC on Orin), from the boot's handoff
command={appliance} serve --config {config}{user_serve}
autostart=true
autorestart=unexpected
exitcodes=0
startsecs=1
startretries=2
stopsignal=TERM
stopwaitsecs=30
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={log_dir}/{service}.log

[program:{persist}]
; commits the service's state exports; pings systemd's watchdog (NotifyAccess=all on the unit)
command={appliance} persist --config {config}{user_persist}
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=300
redirect_stderr=true
stdout_logfile={log_dir}/{persist}.log

[eventlistener:guard]
; a service that keeps dying after its restore -> mark the checkpoint BAD, boot the other one
command={appliance} guard --config {config}{user_boot}
events=PROCESS_STATE_EXITED,PROCESS_STATE_FATAL
buffer_size=64
autorestart=true
stderr_logfile={log_dir}/guard.log
{console}"""

# --- recovery console program (issue 14) --------------------------------------------------------
# Kept apart from the template above so the privilege-separation change (users per program) merges
# cleanly: the console runs as its own unprivileged user, never holds the signing key, and listens
# on loopback by default (TLS on any other address; see appliance/console).
_CONSOLE = """
[program:{console_program}]
; technicians' recovery console (web + `appliance tech` actions); never holds the signing key
command={appliance} console serve --config {config} --state-dir {console_state}{console_listen}
{console_user}autostart=true
autorestart=true
startsecs=2
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={log_dir}/console.log
{privileged}"""

# The console's privileged sides (production, ``users``): each action runs as the user that holds
# its privilege; the console reaches them over unix sockets in the run dir (appliance/console/actiond.py).
# The root USB mount helper is its own systemd unit (systemd/appliance-usbmount.service): supervisord's
# unit forbids mounts.
_PRIVILEGED = """
[program:actions]
; technician actions that need the device key or the store (rollback, import, scrub, slot marks)
command={appliance} console actiond --config {config} --backend persist
user=appliance-persist
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=60
redirect_stderr=true
stdout_logfile={log_dir}/actions.log

[program:boot-actions]
; technician actions that need supervisord or the floor (restart the service; read the floor)
command={appliance} console actiond --config {config} --backend boot
user=appliance-boot
autostart=true
autorestart=true
startsecs=1
stopsignal=TERM
stopwaitsecs=60
redirect_stderr=true
stdout_logfile={log_dir}/boot-actions.log
"""


@dataclass(frozen=True)
class SupervisordLayout:
    config: str  # node.json path
    appliance: str  # command that runs the appliance CLI
    socket: str
    log_dir: str
    pidfile: str
    service: str = "model"
    persist: str = "persist"
    environment: str = ""  # KEY="value",KEY2="value2" for every program
    users: bool = False  # run each program as its own user (production; node-init --users)
    console: bool = False  # add the recovery console program (issue 14)
    console_state: str = "/var/lib/appliance-console"
    console_listen: tuple[str, ...] = ()  # HOST:PORT; empty = the console's default (loopback)
    console_user: str = ""  # supervisord user= of the console program ("" = inherit)


def production() -> SupervisordLayout:
    return SupervisordLayout(
        config="/etc/appliance/node.json",
        appliance="/opt/appliance/venv/bin/appliance",
        socket="/run/appliance-supervisor/supervisor.sock",
        log_dir="/var/log/appliance",
        pidfile="/run/appliance-supervisor/supervisord.pid",
        users=True,
        console=True,
        console_user="appliance-console",
    )


def render(layout: SupervisordLayout) -> str:
    env = f"environment={layout.environment}\n" if layout.environment else ""
    return _TEMPLATE.format(
        config=layout.config,
        appliance=layout.appliance,
        socket=layout.socket,
        log_dir=layout.log_dir,
        pidfile=layout.pidfile,
        service=layout.service,
        persist=layout.persist,
        environment=env,
        socket_mode="0700" if layout.users else "0770",
        socket_owner=f"\nchown={BOOT}:{BOOT}" if layout.users else "",
        user_serve=_user(layout, SERVE),
        user_persist=_user(layout, PERSIST),
        user_boot=_user(layout, BOOT),
        console=_console(layout),
    )


def _console(layout: SupervisordLayout) -> str:
    if not layout.console:
        return ""
    return _CONSOLE.format(
        console_program="console",
        appliance=layout.appliance,
        config=layout.config,
        console_state=layout.console_state,
        console_listen="".join(f" --listen {a}" for a in layout.console_listen)
        + (" --actions socket" if layout.users else ""),
        console_user=f"user={layout.console_user}\n" if layout.console_user else "",
        log_dir=layout.log_dir,
        privileged=_PRIVILEGED.format(appliance=layout.appliance, config=layout.config, log_dir=layout.log_dir)
        if layout.users
        else "",
    )


def _user(layout: SupervisordLayout, name: str) -> str:
    return f"\nuser={name}" if layout.users else ""
