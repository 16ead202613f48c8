"""The technicians' local recovery console: a web console and CLI verbs over the node's own read models.

Owns the HTTP edge (``app``), technician credentials (``credentials``: argon2id hashes, one-time
setup code), sessions and request checks (``security``), the per-device TLS certificate
(``tls``), the pages' data (``readmodel``), running actions outside the console process
(``actions``), the diagnostics bundle (``diagnostics``), Prometheus metrics (``metrics``) and
the console's CLI verbs (``commands``). The rules (lockout, sessions, origins, action plans)
are pure and live in ``appliance.format.console``. The console never holds the signing key:
actions that commit run in another process (see ``actions``). Spec: docs/design.md §12.
"""
