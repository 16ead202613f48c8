#!/usr/bin/env bash
# Set up a development machine and run the demo or the tests.
#
#   bash bootstrap/dev.sh demo    # the whole lifecycle on the built-in model
#   bash bootstrap/dev.sh test    # lint, types, layers, and the test suite (what CI runs)
#
# Creates .venv with Python 3.11 (or $PYTHON), installs CPU torch first (`torch==2.13.0`, which
# pip takes from local disk on the dev/CI machines; a bare `torch` would pull a multi-GB CUDA
# build), then this package with its dev extras. Safe to re-run: an existing venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# System packages: each file in bootstrap/deps.d/*.sh appends Debian package names to APT_PACKAGES
# (one file per capability, so capabilities never edit the same line). As root (CI runs as root)
# the missing ones are installed with apt-get; otherwise they are listed with the command to run.
system_deps() {
    APT_PACKAGES=()
    local f missing=()
    for f in bootstrap/deps.d/*.sh; do
        [ -e "$f" ] || continue
        # shellcheck disable=SC1090
        source "$f"
    done
    for f in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$f" 2>/dev/null | grep -q "install ok installed" || missing+=("$f")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages (tests that need them skip): sudo apt-get install ${missing[*]}" >&2
    fi
}

setup() {
    system_deps
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    if ! python -c "import torch" 2>/dev/null; then
        pip install --quiet "$TORCH_SPEC"
    fi
    pip install --quiet -e ".[dev]"
}

run_tests() {
    ruff check .
    ruff format --check .
    mypy
    lint-imports
    pytest -m "not slow and not vm and not hil" "$@"
    py310_smoke
    bash bootstrap/hf.sh  # tests/hf under transformers 4.x and 5.x, each in its own venv
}

# The Jetson runs Python 3.10. The torch-free layers (format, signing, codec, storage) and their
# unit tests run under 3.10 here too; torch for 3.10 is a CUDA build on PyPI, so it is not used.
find_python310() {
    local candidate
    for candidate in python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10; do
        if "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 10)" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

py310_smoke() {
    local py310
    if ! py310=$(find_python310); then
        echo "py310 smoke: SKIPPED (no working python3.10 on this machine)"
        return 0
    fi
    if [ ! -x .venv310/bin/python ]; then
        "$py310" -m venv .venv310
    fi
    .venv310/bin/pip install --quiet numpy zstandard cryptography safetensors pytest hypothesis supervisor
    PYTHONPATH=. .venv310/bin/python -m pytest -q -p no:cacheprovider tests/unit
}

cmd=${1:-test}
shift || true
setup
case "$cmd" in
    demo) appliance demo "$@" ;;
    test) run_tests "$@" ;;
    *) echo "usage: bash bootstrap/dev.sh {demo|test} [args]" >&2; exit 2 ;;
esac
