#!/usr/bin/env bash
# Install the appliance package into a Debian/Ubuntu root file system directory, with the release
# trust store and the factory checkpoint. The same script customises NVIDIA's
# Linux_for_Tegra/rootfs before flashing and the Debian rootfs of the VM image (tests/vm), so the VM
# tests the code path that builds the Jetson rootfs.
#
#   sudo bash image/customize-rootfs.sh ROOTFS appliance_<v>_<arch>.deb \
#       --release-trust release-trust.json --factory FACTORY_STORE \
#       [--node-json node.json] [--provision provision.json] [--tpm2] [--apt]
#
#   ROOTFS           a Debian/Ubuntu rootfs directory (Linux_for_Tegra/rootfs after apply_binaries.sh)
#   --release-trust  the release trust store (trust.json format, docs/design.md §5.3): the public keys
#                    allowed to sign checkpoints for this fleet; installed read-only to
#                    /usr/share/appliance/trust/release.json
#   --factory        a store holding the factory checkpoint, committed and signed with a release key
#                    (`appliance init` + `appliance commit`); installed to /usr/share/appliance/factory;
#                    first boot copies it into empty slots
#   --node-json      replaces /etc/appliance/node.json
#   --provision      a one-shot provisioning file (docs/image.md §4), installed 0600 as
#                    /etc/appliance/provision.json; first boot applies it, then shreds it
#   --tpm2           the node keeps its store KEK sealed to its TPM2 (node.json "encrypt_kek":
#                    "systemd-creds:PATH", systemd >= 250): installs the unit drop-ins that let boot,
#                    first boot and the supervised programs reach /dev/tpmrm0, and makes their users
#                    members of group tss (Debian's tpm-udev and the tss2 libraries must be in the
#                    rootfs, or pass --apt); docs/image.md §4.4
#   --apt            install missing dependencies with apt-get inside the rootfs (needs its archive)
#
# A foreign-architecture rootfs (arm64 on an x86-64 host) runs its maintainer scripts through
# qemu-user-static (binfmt_misc with the F flag, as Debian's qemu-user-static registers it).
# Needs root (chroot, bind mounts). Idempotent: running it again reinstalls the same files.
set -euo pipefail
ROOT=${1:?usage: customize-rootfs.sh ROOTFS DEB [options]}
DEB=${2:?usage: customize-rootfs.sh ROOTFS DEB [options]}
shift 2
TRUST="" FACTORY="" NODE_JSON="" PROVISION="" APT=0 TPM2=0
while [ $# -gt 0 ]; do
    case "$1" in
        --release-trust) TRUST=$2; shift 2 ;;
        --factory) FACTORY=$2; shift 2 ;;
        --node-json) NODE_JSON=$2; shift 2 ;;
        --provision) PROVISION=$2; shift 2 ;;
        --apt) APT=1; shift ;;
        --tpm2) TPM2=1; shift ;;
        *) echo "customize-rootfs: unknown option $1" >&2; exit 2 ;;
    esac
done
die() { echo "customize-rootfs: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (chroot and bind mounts)"
[ -f "$ROOT/var/lib/dpkg/status" ] && [ -f "$ROOT/etc/os-release" ] || die "$ROOT is not a Debian/Ubuntu root file system"
[ -f "$DEB" ] || die "package $DEB does not exist"
[ -z "$TRUST" ] || [ -f "$TRUST" ] || die "release trust store $TRUST does not exist"
[ -z "$FACTORY" ] || [ -f "$FACTORY/store.json" ] || die "$FACTORY is not a store (no store.json)"
ROOT=$(cd "$ROOT" && pwd)

MOUNTS=()
cleanup() {
    local i
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
    rm -f "$ROOT/tmp/appliance.deb"
}
trap cleanup EXIT
for fs in proc sys dev; do
    mkdir -p "$ROOT/$fs"
    mount --rbind "/$fs" "$ROOT/$fs"
    mount --make-rslave "$ROOT/$fs"
    MOUNTS+=("$ROOT/$fs")
done
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"
}

want_arch=$(dpkg-deb -f "$DEB" Architecture)
have_arch=$(in_root dpkg --print-architecture) || die "cannot run programs in $ROOT (foreign architecture without qemu-user-static?)"
[ "$want_arch" = "$have_arch" ] || die "package is $want_arch, the rootfs is $have_arch"

cp "$DEB" "$ROOT/tmp/appliance.deb"
if ! in_root dpkg -i /tmp/appliance.deb; then
    if [ "$APT" -eq 1 ]; then
        in_root apt-get install -y --no-install-recommends -f
    else
        die "dpkg could not install the package (missing dependencies above?); rerun with --apt on a host that reaches the rootfs's archive"
    fi
fi
in_root /opt/appliance/venv/bin/appliance --version

if [ -n "$TRUST" ]; then
    install -D -m 0444 "$TRUST" "$ROOT/usr/share/appliance/trust/release.json"
fi
if [ -n "$FACTORY" ]; then
    rm -rf "$ROOT/usr/share/appliance/factory"
    mkdir -p "$ROOT/usr/share/appliance/factory"
    # the store's configuration and committed checkpoints; never its boot state, lock or caches
    (cd "$FACTORY" && find . -path ./lock -prune -o -name state.json -prune -o -name 'scrub.json' -prune \
        -o -name 'device-profile.json' -prune -o -name '.tmp-*' -prune -o -type f -print0) |
        (cd "$FACTORY" && xargs -0 -r cp --parents -t "$ROOT/usr/share/appliance/factory")
    find "$ROOT/usr/share/appliance/factory" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0444 {} +
fi
if [ -n "$NODE_JSON" ]; then
    install -m 0644 "$NODE_JSON" "$ROOT/etc/appliance/node.json"
fi
if [ -n "$PROVISION" ]; then
    install -m 0600 "$PROVISION" "$ROOT/etc/appliance/provision.json"
fi
if [ "$TPM2" -eq 1 ]; then
    if ! in_root getent group tss >/dev/null || [ ! -e "$ROOT/lib/udev/rules.d/60-tpm-udev.rules" ]; then
        [ "$APT" -eq 1 ] || die "--tpm2: the rootfs lacks group tss / tpm-udev; install tpm-udev and libtss2-esys (or pass --apt)"
        in_root apt-get install -y --no-install-recommends tpm-udev libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0
    fi
    for dir in "$ROOT"/usr/share/appliance/tpm2/*.service.d; do
        install -D -m 0644 "$dir/60-appliance-tpm2.conf" "$ROOT/etc/systemd/system/$(basename "$dir")/60-appliance-tpm2.conf"
    done
    install -D -m 0644 "$ROOT/usr/share/appliance/tpm2/sysusers-appliance-tpm2.conf" "$ROOT/etc/sysusers.d/appliance-tpm2.conf"
    in_root systemd-sysusers /etc/sysusers.d/appliance-tpm2.conf
    in_root getent group tss | grep -q appliance-persist || die "--tpm2: the node's users did not join group tss"
fi
echo "customize-rootfs: $ROOT has appliance $(dpkg-deb -f "$DEB" Version) ($want_arch)"
