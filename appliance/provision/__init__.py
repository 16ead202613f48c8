"""First boot and provisioning of a flashed node (docs/image.md §4).

Owns: formatting the empty checkpoint partitions (``partitions``), the resumable first-boot
steps (``firstboot``) and the small durable files they write (``files``). The rules for the
provisioning file and the device identity are pure and live in ``appliance.format.provisioning``;
the device key store is ``appliance.node.keyprovider``.
"""

from appliance.provision.firstboot import FirstBoot, FirstBootPaths

__all__ = ["FirstBoot", "FirstBootPaths"]
