"""The persistence watchdog: commit the model service's state exports as signed delta checkpoints.

Owns: the outbox (scan, validate, quarantine), committing an export into the slot that does not
hold the newest GOOD state, and the daemon loop (``watchdog`` observer wake-ups + timer +
rescan, systemd watchdog pings). Does not own capturing state (``appliance.service``) or the
store's commit mechanics (``appliance.store``).
"""
