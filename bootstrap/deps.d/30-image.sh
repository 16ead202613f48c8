# image/ (package, rootfs, VM tier): dpkg-deb, mmdebstrap, QEMU with KVM/TCG, GPT tools, arm64 chroots, swtpm (the VM's TPM 2.0) and systemd-creds's tss2 libraries.
APT_PACKAGES+=(dpkg-dev mmdebstrap qemu-system-x86 qemu-utils fdisk gdisk e2fsprogs qemu-user-static binfmt-support arch-test swtpm swtpm-tools libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0)
