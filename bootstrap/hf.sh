#!/usr/bin/env bash
# Hugging Face interop tests (tests/hf, marker `hf`) against transformers 4.x AND 5.x.
#
#   bash bootstrap/hf.sh            # after bootstrap/dev.sh set up .venv; CI runs it from dev.sh test
#
# transformers 4.x needs huggingface-hub < 1.0 and 5.x needs >= 1.0, so each gets its own venv
# (.venv-tf4, .venv-tf5). Both reuse the main .venv's packages (torch, appliance, pytest) through a
# .pth line, so torch is installed once; only transformers and what it adds land in each venv.
# No network is used by the tests: models are built from configs, never downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TF_VERSIONS=${TF_VERSIONS:-"4.57.6 5.25.0"}   # the newest 4.x and 5.x at the time of writing

main_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

for version in $TF_VERSIONS; do
    env=".venv-tf${version%%.*}"
    if [ ! -x "$env/bin/python" ]; then
        "$PYTHON" -m venv "$env"
    fi
    site=$("$env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$main_site')" > "$site/zz_appliance_main.pth"
    if ! "$env/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$version')" 2>/dev/null; then
        "$env/bin/pip" install --quiet "transformers==$version"
    fi
    echo "== transformers $version ($env)"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$env/bin/python" -m pytest -q -p no:cacheprovider -m hf tests/hf "$@"
done
