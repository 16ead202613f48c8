"""The boot supervisor: choose, restore, health-gate and mark a checkpoint; fall back; recover.

Owns: the boot sequence (discovery -> signature -> anti-rollback -> restore in the service ->
canary -> mark GOOD -> raise floor -> admit traffic), fallback between candidates, recovery
mode, control of supervisord programs over XML-RPC, and the supervisord event listener that
turns a service crash loop into "mark BAD, boot the other". Does not own restoring bytes (the
model service does, in its own process) or committing (``appliance.persist``).
"""
