# Recovery console (issue 14): browser tests drive Debian's Chromium through Playwright's Python API
# (never a downloaded browser); USB tests use umockdev (synthetic udev devices that pyudev's libudev
# sees), a FAT image (dosfstools, mtools) and FUSE FAT/exFAT drivers for kernels without vfat/exfat
# (the console mounts sticks itself: kernel driver first, else fusefat / mount.exfat-fuse).
APT_PACKAGES+=(chromium umockdev gir1.2-umockdev-1.0 python3-gi dosfstools mtools fusefat exfat-fuse)
