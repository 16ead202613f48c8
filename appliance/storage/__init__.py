"""Storage edge: the one small interface all store I/O goes through, and its local implementation.

Owns: ``Storage`` (the seam tests swap for crash/fault injection), ``LocalStorage``, the
durable-write helper and OS-error translation. Does not own what files mean (``appliance.store``).
"""

from appliance.storage.base import Storage, parent_of
from appliance.storage.durable import DurableBatch, write_durable
from appliance.storage.local import LocalStorage

__all__ = ["DurableBatch", "LocalStorage", "Storage", "parent_of", "write_durable"]
