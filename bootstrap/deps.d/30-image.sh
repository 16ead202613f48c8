# image/ (package, rootfs, VM tier): dpkg-deb, mmdebstrap, QEMU with KVM/TCG, GPT tools, arm64 chroots.
APT_PACKAGES+=(dpkg-dev mmdebstrap qemu-system-x86 qemu-utils fdisk gdisk e2fsprogs qemu-user-static binfmt-support arch-test)
