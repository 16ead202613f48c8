#!/usr/bin/env bash
# One prepared run of the GPU checks on a lent CUDA machine (x86-64 + NVIDIA GPU, no network).
#
#   bash hil/device_run.sh [LAYERS]     # results and logs under $OUT (or ./out/hil)
#
# Expects the wheels that machine lacks in .whl/ (nvidia-nvcomp-cu13, nvidia-libnvcomp-cu13,
# zstandard, cryptography, cffi, pycparser; see docs/performance.md "GPU"), installs them into
# /tmp/site, then runs: the hil tests (bit-exact GPU restore, eg2 decode, damaged frames refused
# before nvCOMP) and the restore benchmark (CPU private, CPU zero-copy, nvCOMP) for a
# Llama-shaped bf16 state of LAYERS layers (32 = Llama-2-7B, 13.5 GB) under both policies, each
# with `appliance report`'s prediction next to the measured CPU restores (issue 16 goal 5), and
# the persistence watchdog's delta persist against a full commit on the device's CPU
# (`python3 -m bench.persist_delta`, issue 16 goal 2: the same lines as the CPU bench).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/hil}
mkdir -p "$OUT"
LAYERS=${1:-32}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nproc; free -g | head -2; df -h /tmp | tail -1
    python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
    python3 -c "from appliance.codec.gpu import available; import nvidia.nvcomp as n; print('nvcomp', n.__version__, available())"
} 2>&1 | tee "$OUT/env.txt"
timeout 240 python3 -m pytest -p no:cacheprovider -q -m hil hil/ -o addopts="" -rA 2>&1 | tee "$OUT/hil_tests.txt"
for policy in compact fast; do
    timeout 300 python3 hil/bench_gpu_restore.py --layers "$LAYERS" --policy "$policy" --workdir /tmp 2>&1 | tee "$OUT/bench_${policy}_${LAYERS}.txt"
done
timeout 300 python3 -m bench.persist_delta --layers 4 --steps 3 --workdir /tmp 2>&1 | tee "$OUT/persist_delta_4.txt"
