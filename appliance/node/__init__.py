"""Node edge: what one appliance node's processes share besides the store.

Owns: the node configuration (``node.json``), the run directory (handoff, service report,
recovery file, boot lock), the anti-rollback floor interface, entry-point loading, mount checks
and systemd notification. Does not own the boot, service or persistence logic that use them.
"""
