# Checkpoints that travel (issue 13): FAT32/exFAT tools for the USB-stick export/import tests (with
# the FUSE implementations for kernels without the FAT drivers), nftables for replication's network faults.
APT_PACKAGES+=(dosfstools exfatprogs exfat-fuse fusefat nftables)
