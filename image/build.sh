#!/usr/bin/env bash
# Build the node's artefacts from this checkout (docs/image.md):
#
#   bash image/build.sh deb --arch arm64 --torch-wheel JETPACK_TORCH.whl   # the Jetson package
#   bash image/build.sh vm                                                 # amd64 package + VM image
#   bash image/build.sh all                                                # both of the above for amd64
#
# `deb` passes its options to image/build-deb.sh; `vm` builds the amd64 package with the CPU torch
# wheel and the VM image (image/build-vm.sh, root). A fresh machine needs the Debian packages of
# bootstrap/deps.d/30-image.sh and the dev venv (bash bootstrap/dev.sh test sets both up).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
shift || true
case "$what" in
    deb) bash image/build-deb.sh "$@" ;;
    vm|all) bash image/build-vm.sh "$@" ;;   # builds the amd64 .deb on the way
    *) echo "usage: bash image/build.sh {deb|vm|all} [options]" >&2; exit 2 ;;
esac
