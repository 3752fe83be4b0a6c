#!/usr/bin/env bash
# One command for a CUDA machine with torch + triton preinstalled and no package index:
# builds hnrnn._C, runs the GPU test tier, the benchmark suites and the zoo on every backend,
# within about 10 minutes. Leaves log.txt and result JSON in OUT_DIR, ready to copy into
# benchmarks/results/<device>/ and commit (then run `hnrnn report`).
#   usage: bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: gpu_check.sh OUT_DIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
step() { echo; echo "=== $* ($(date -u +%T))"; }
{
  step environment
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

  step build
  MAX_JOBS=${MAX_JOBS:-16} pip install --no-build-isolation --no-deps -e . 2>&1 | tail -3
  python -c "import hnrnn._C as c; assert c.cuda_compiled(), 'CUDA half not compiled'; print('hnrnn._C with CUDA')" || exit 1

  step "GPU tests"
  timeout 300 python -m pytest -m gpu tests -q -p no:cacheprovider -o addopts= -x --durations=5
  echo "gpu tests exit code: $?"

  step benchmarks
  timeout 240 hnrnn bench --out "$OUT"
  echo "bench exit code: $?"

  step "zoo, end to end"
  for backend in eager cuda triton; do
    timeout 120 hnrnn zoo --device cuda --seeds 1 --backend $backend --json "$OUT/zoo-$backend.json" | tail -9
  done
} 2>&1 | tee "$LOG"
