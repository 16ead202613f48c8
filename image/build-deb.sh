#!/usr/bin/env bash
# Build the node's Debian package: appliance_<version>_<arch>.deb.
#
#   bash image/build-deb.sh --arch arm64 --torch-wheel torch-2.5.0a0+...-cp310-cp310-linux_aarch64.whl
#   bash image/build-deb.sh --arch amd64 --torch-wheel /opt/wheels/torch-2.13.0+cpu-cp311-...whl   # the VM
#   bash image/build-deb.sh --arch amd64 --without-torch     # CLI/store tools only (cannot serve a model)
#
# The package installs with no network: it carries a wheelhouse resolved for the target from
# image/requirements.lock (hash-checked by pip), this project's own wheel and, when given, the
# torch wheel (NVIDIA's JetPack wheel on a Jetson: a documented input, never downloaded here).
# postinst builds /opt/appliance/venv from that wheelhouse offline. Everything in systemd/ is
# packaged as it is at build time (units, mounts, drop-ins, tmpfiles, sysusers, supervisord.conf,
# node.json, journald catalog), plus bootstrap/'s first-boot units; an unknown file in systemd/
# fails the build rather than being left out. Layout and maintainer scripts: docs/image.md §1.
#
# Options: --arch amd64|arm64 (default: this machine), --python X.Y (default: 3.10 on arm64 =
# JetPack 6, 3.11 on amd64 = the Debian bookworm VM), --out DIR (default out/image),
# --torch-wheel FILE | --without-torch (one is required).
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

ARCH=$(dpkg --print-architecture)
PYVER=""
OUT=out/image
TORCH=""
WITHOUT_TORCH=0
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH=$2; shift 2 ;;
        --python) PYVER=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --torch-wheel) TORCH=$2; shift 2 ;;
        --without-torch) WITHOUT_TORCH=1; shift ;;
        *) echo "build-deb: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$ARCH" in
    arm64) PLATFORM=manylinux2014_aarch64; PYVER=${PYVER:-3.10} ;;
    amd64) PLATFORM=manylinux2014_x86_64; PYVER=${PYVER:-3.11} ;;
    *) echo "build-deb: --arch must be amd64 or arm64, got $ARCH" >&2; exit 2 ;;
esac
if [ -z "$TORCH" ] && [ "$WITHOUT_TORCH" -eq 0 ]; then
    echo "build-deb: pass --torch-wheel FILE (NVIDIA's JetPack wheel on a Jetson) or --without-torch" >&2
    exit 2
fi
if [ -n "$TORCH" ] && [ ! -f "$TORCH" ]; then
    echo "build-deb: torch wheel $TORCH does not exist" >&2
    exit 2
fi
ABI=cp${PYVER/./}
PYTHON=${PYTHON:-python3}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEB="$OUT/appliance_${VERSION}_${ARCH}.deb"
STAGE="$OUT/stage-$ARCH"
CACHE="$OUT/cache/wheels-$PLATFORM-$ABI"   # downloads survive between builds of one run
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$CACHE"

# --- wheelhouse ------------------------------------------------------------------------------
WH="$STAGE/opt/appliance/wheelhouse"
mkdir -p "$WH"
"$PYTHON" -m pip download --quiet --require-hashes --only-binary=:all: --platform "$PLATFORM" \
    --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --dest "$CACHE" -r image/requirements.lock 2> >(grep -v '^WARNING: Location' >&2)
# exactly the locked files (the cache may hold other versions from earlier locks)
"$PYTHON" - "$CACHE" "$WH" image/requirements.lock <<'EOF'
import hashlib, pathlib, re, shutil, sys
cache, wh, lock = map(pathlib.Path, sys.argv[1:])
wanted = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock.read_text()))
names = {re.match(r"^([A-Za-z0-9_.-]+)==", l).group(1).lower().replace("_", "-")
         for l in lock.read_text().splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", l)}
found = set()
for whl in sorted(cache.glob("*.whl")):
    if hashlib.sha256(whl.read_bytes()).hexdigest() in wanted:
        shutil.copy2(whl, wh / whl.name)
        found.add(re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower())
missing = names - found
if missing:
    sys.exit(f"build-deb: wheelhouse lacks {sorted(missing)}")
EOF
had_build=0; [ -e "$REPO/build" ] && had_build=1
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WH" "$REPO" 2> >(grep -v '^WARNING: Location' >&2)
[ "$had_build" -eq 1 ] || rm -rf "$REPO/build"   # setuptools' scratch directory, if we made it
cp image/requirements.lock "$STAGE/opt/appliance/requirements.lock"
if [ -n "$TORCH" ]; then
    cp "$TORCH" "$WH/"
    (cd "$WH" && sha256sum "$(basename "$TORCH")") > "$STAGE/opt/appliance/torch.sha256"
fi
echo "$VERSION" > "$STAGE/opt/appliance/VERSION"
mkdir -p "$STAGE/opt/appliance/docs"
cp docs/boot.md docs/design.md "$STAGE/opt/appliance/docs/"
[ -f docs/image.md ] && cp docs/image.md "$STAGE/opt/appliance/docs/"

# --- everything in systemd/ and bootstrap/systemd/ --------------------------------------------
"$PYTHON" image/deb_layout.py "$STAGE" systemd bootstrap/systemd
mkdir -p "$STAGE/usr/bin"
ln -s /opt/appliance/venv/bin/appliance "$STAGE/usr/bin/appliance"

# --- control files --------------------------------------------------------------------------
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
TORCH_NOTE="torch: $( [ -n "$TORCH" ] && basename "$TORCH" || echo 'not included (install NVIDIA JetPack torch into /opt/appliance/venv)')"
cat > "$STAGE/DEBIAN/control" <<EOF
Package: appliance
Version: $VERSION
Architecture: $ARCH
Maintainer: appliance developers <appliance@localhost>
Installed-Size: $SIZE
Depends: python3 (>= $PYVER), python3-venv, systemd, e2fsprogs, util-linux
Section: misc
Priority: optional
Description: survivable model state for edge AI nodes
 Signed, verified, crash-consistent A/B model checkpoints, a boot supervisor that restores the
 newest known-good state on power-up, and a persistence watchdog. Carries its Python wheelhouse
 (CPython $PYVER, $PLATFORM) and installs into /opt/appliance/venv with no network.
 $TORCH_NOTE
EOF
find "$STAGE/etc" -type f 2>/dev/null | sed "s#^$STAGE##" | sort > "$STAGE/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "image/debian/$script" "$STAGE/DEBIAN/$script"
done
"$PYTHON" image/deb_layout.py --units "$STAGE" > "$STAGE/opt/appliance/units"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
