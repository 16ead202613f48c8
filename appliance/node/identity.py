"""Which device this node is, and the store as this node must see it (issue 10, item 6 completed).

Owns: ``open_node_store`` — every node daemon and verb opens the store through it, so the trust
store is scoped to this node's device id (``NodeConfig.device_id``: node.json's own, else
``/etc/appliance/device.json`` that first boot writes). A trust store may list the device keys
of several devices (a fleet's shared trust file); a device-role signature then counts only from
the key bound to *this* id, another device's valid key is refused (``ForeignDeviceKeyError``,
77). Fail closed: if the trust store binds device keys to more than one device and the node does
not know its id, it refuses to open the store (``DeviceIdentityError``, 78) instead of
accepting any of them. Does not own the rule itself (``appliance.signing.lineage``).
"""

from __future__ import annotations

from appliance.errors import DeviceIdentityError
from appliance.node.config import NodeConfig
from appliance.store.store import Store


def open_node_store(config: NodeConfig, *, trust_path: str | None = None) -> Store:
    """The node's store with its trust store scoped to this device (see the module docstring).

    ``trust_path``: override (default ``config.trust_file()``, which refuses a production trust
    store on the store partition). Raises ``DeviceIdentityError`` (78) as described above.
    """
    path = trust_path if trust_path is not None else config.trust_file()
    store = Store.open(config.store, trust_path=path, device_id=config.device_id or None)
    bound = store.trust.device_ids
    if not config.device_id and len(bound) > 1:
        raise DeviceIdentityError(
            f"the trust store binds device keys to {len(bound)} devices ({', '.join(sorted(bound))[:200]}) and "
            "this node does not know which one it is, so it would accept any of them"
        )
    return store
