"""appliance: survivable model state for edge AI nodes.

A checkpoint is a signed manifest over content-addressed, SHA-256-verified frames, written
crash-consistently into one of two self-contained slots (A/B) and restored bit-exactly,
falling back to the other slot when anything fails. See docs/design.md.

The supported machine interface is the CLI with ``--json``; the Python API is
``appliance.api.save`` / ``appliance.api.load`` on a ``Store``.
"""

__version__ = "0.1.0"
