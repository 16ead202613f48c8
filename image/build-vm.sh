#!/usr/bin/env bash
# Build the VM image: a Debian bookworm rootfs (mmdebstrap) customised by the SAME
# image/customize-rootfs.sh that customises Linux_for_Tegra/rootfs, as a raw ext4 disk plus the
# kernel and initrd for QEMU's direct kernel boot. The VM tier (tests/vm) boots it.
#
#   bash image/build-vm.sh [--out DIR] [--extra-root DIR] [--persist-interval S]
#
# Inputs (all produced here unless given): the amd64 package (image/build-deb.sh with the CPU torch
# wheel: $TORCH_WHEEL, else `pip download torch==2.13.0`), a release key + factory checkpoint made
# with this checkout's appliance CLI ($PYTHON, default .venv/bin/python: a development release; a
# real release signs with its own key), and the release trust store holding that key.
# --extra-root DIR overlays DIR onto the rootfs after customisation and enables every unit under
# DIR/etc/systemd/system (the VM tier's guest agent). Needs root, mmdebstrap, e2fsprogs.
#
# Caches (out/image/cache): the base rootfs tarball, keyed by suite + package list (the slow part:
# minutes), and the pip downloads. Prints the output directory on its last line; it holds
# root.img, vmlinuz, initrd.img, release.key (the development release key) and build.json.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=out/image/vm
EXTRA=""
PERSIST_INTERVAL=300
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --extra-root) EXTRA=$(cd "$2" && pwd); shift 2 ;;
        --persist-interval) PERSIST_INTERVAL=$2; shift 2 ;;
        *) echo "build-vm: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "build-vm: needs root (mmdebstrap, chroot)" >&2; exit 1; }
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SUITE=bookworm
PACKAGES=systemd-sysv,udev,linux-image-amd64,initramfs-tools,python3,python3-venv,e2fsprogs,kmod,zstd,tpm-udev,libtss2-esys-3.0.2-0,libtss2-rc0,libtss2-mu0  # tss: the VM's swtpm (--tpm2)
CACHE=$REPO/out/image/cache
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
log() { echo "build-vm: $*" >&2; }
t0=$(date +%s)

# 1. base rootfs (cached by suite + packages)
key=$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
BASE="$CACHE/base-$SUITE-$key.tar"
if [ ! -f "$BASE" ]; then
    log "mmdebstrap $SUITE ($PACKAGES) -> $BASE"
    rm -rf "$BASE.tmp" "$BASE"  # a directory left by an older run of this script
    mmdebstrap --variant=minbase --format=tar --include="$PACKAGES" "$SUITE" "$BASE.tmp" >&2  # ".tmp": say the format
    mv "$BASE.tmp" "$BASE"
fi

# 2. the package, with the CPU torch wheel (the VM's stand-in for NVIDIA's JetPack wheel)
TORCH=${TORCH_WHEEL:-}
if [ -z "$TORCH" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: torch==2.13.0 -d "$CACHE/torch" 2> >(grep -v '^WARNING: Location' >&2)
    TORCH=$(ls "$CACHE"/torch/torch-2.13.0*-cp311-*x86_64.whl | head -1)
fi
DEB=$(PYTHON="$PYTHON" bash image/build-deb.sh --arch amd64 --torch-wheel "$TORCH" --out "$CACHE/.." | tail -1)
log "package $DEB"

# 3. a development release: key, release trust store, factory checkpoint (generation 1, exported)
REL="$OUT/release"
rm -rf "$REL" && mkdir -p "$REL"
"$PYTHON" -m appliance.cli.main node-init "$REL/node" >/dev/null
"$PYTHON" -m appliance.cli.main seed --config "$REL/node/node.json" >/dev/null
"$PYTHON" -m appliance.cli.main export "$REL/node/store" "$REL/factory" >/dev/null
cp "$REL/node/store/store.json" "$REL/factory/store.json"
cp "$REL/node/store/trust.json" "$REL/release-trust.json"
cp "$REL/node/keys/device.key" "$OUT/release.key"
"$PYTHON" - "$REPO/systemd/node.json" "$REL/node.json" "$PERSIST_INTERVAL" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))
config["persist_interval"] = float(sys.argv[3])
json.dump(config, open(sys.argv[2], "w"), indent=2, sort_keys=True)
EOF

# 4. the rootfs: base + VM basics + customize-rootfs.sh (the Jetson path) + extra overlay
ROOT="$OUT/rootfs"
rm -rf "$ROOT" && mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE"
echo "appliance-vm" > "$ROOT/etc/hostname"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$ROOT/etc/fstab"
: > "$ROOT/etc/machine-id"   # systemd generates one at first boot, as on a flashed device
bash image/customize-rootfs.sh "$ROOT" "$DEB" --release-trust "$REL/release-trust.json" \
    --factory "$REL/factory" --node-json "$REL/node.json" --tpm2 >&2
if [ -n "$EXTRA" ]; then
    cp -a "$EXTRA/." "$ROOT/"
    for unit in "$EXTRA"/etc/systemd/system/*.service; do
        [ -e "$unit" ] || continue
        chroot "$ROOT" systemctl enable "$(basename "$unit")" >&2
    done
fi
cp -L "$ROOT/vmlinuz" "$OUT/vmlinuz"
cp -L "$ROOT/initrd.img" "$OUT/initrd.img"

# 5. the root disk: ext4 populated from the directory (no loop mount)
rm -f "$OUT/root.img"
mkfs.ext4 -q -L root -d "$ROOT" "$OUT/root.img" 4G
rm -rf "$ROOT"
cat > "$OUT/build.json" <<EOF
{"deb": "$(basename "$DEB")", "deb_sha256": "$(sha256sum "$DEB" | cut -d' ' -f1)", "base": "$(basename "$BASE")",
 "torch": "$(basename "$TORCH")", "persist_interval": $PERSIST_INTERVAL, "seconds": $(( $(date +%s) - t0 ))}
EOF
log "done in $(( $(date +%s) - t0 )) s"
echo "$OUT"
