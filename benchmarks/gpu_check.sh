#!/usr/bin/env bash
# One command for a CUDA machine with torch + triton preinstalled and no package index:
# builds hnrnn._C, runs the GPU test tier, the benchmark suites and the zoo on every backend.
# Leaves one log (log.txt, every stage in turn) and the result JSON in OUT_DIR (six files in
# all: a device session brings back at most eight), ready to copy into
# benchmarks/results/<device>/ and commit (then run `hnrnn report`).
#
#   usage: bash benchmarks/gpu_check.sh OUT_DIR [STAGE ...]
#   stages: build test bench zoo sanitize   (default: the first four, in that order)
#
# Sized for a short GPU session: the stage limits add up to 10 minutes for the default round
# (build 2.5, test 3, bench 3, zoo 1.5; sanitize, when asked for, 9 more), and a machine that
# limits a command's time can run the stages one call at a time (`build test`, then `bench`,
# then `zoo`, then `sanitize`); the build stays in place between calls. A stage that runs out
# of time logs it and the next one still runs. The benchmark suites are time-boxed from inside
# (`hnrnn bench --max-seconds`: cases not started by then are skipped, torch.compile's last),
# so a suite that runs long still writes the JSON of what it measured. The CPU test
# tier is CI's job and is not repeated here. Benchmarks cover the seed shapes; set
# HNRNN_BENCH_GRID=1 (or =full) for the shape grids when there is time for them, and
# HNRNN_BENCH_PATHS=1 to time each path of the CUDA GRU / RNN forced too (cuda:persistent,
# cuda:grid, cuda:step), the data for tuning its choice (grid_plan in csrc/cuda/rnn.cu).
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: gpu_check.sh OUT_DIR [build|test|bench|zoo|sanitize ...]}" && cd "$1" && pwd)
shift
STAGES=${*:-build test bench zoo}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
say() { echo; echo "=== $* ($(date -u +%T))"; }

stage_build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  MAX_JOBS=${MAX_JOBS:-16} timeout 150 pip install --no-build-isolation --no-deps -e . 2>&1 | tail -3
  python -c "import torch, hnrnn._C as c; assert c.cuda_compiled(), 'CUDA half not compiled'; print('hnrnn._C with CUDA')"
}

stage_test() {
  # parallel test processes where pytest-xdist is installed: Triton's JIT and torch.compile
  # dominate this tier's time, and they run on the CPU. Where pytest-timeout is installed, a
  # test that hangs (a kernel that never returns: a grid barrier some block never reaches)
  # ends its own process after 100 s, and the others go on. -v names every test as it ends,
  # so a stage stopped by its limit still tells which ran.
  local extra=()
  python -c "import xdist" 2>/dev/null && extra+=(-n 8)
  python -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout=100 --timeout-method=thread)
  timeout 170 python -m pytest -m gpu tests -v -p no:cacheprovider -o addopts= "${extra[@]}" --durations=10
}

stage_bench() {
  # time box per suite, then a limit for the case in flight when it closes
  for suite_box in zoo_cell:50 rnn:70; do
    local suite=${suite_box%:*} box=${suite_box#*:}
    timeout $((box + 30)) hnrnn bench "$suite" --out "$OUT" --max-seconds "$box"
    echo "bench $suite exit code: $?"
  done
}

stage_sanitize() {
  # compute-sanitizer over the GPU tier's kernel tests (issue 6). memcheck (out-of-bounds and
  # misaligned accesses; torch's caching allocator off, so a read past a tensor is past its
  # allocation) on every CUDA and Triton case; racecheck (shared-memory hazards: a missing
  # __syncthreads in the persistent kernels) on the cuda backend's float64 / reference
  # comparisons. Both are slow, hence smaller selections than the test stage and own limits.
  local cs
  cs=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  [ -x "$cs" ] || { echo "compute-sanitizer not found (looked on PATH and in \$CUDA_HOME/bin)"; return 1; }
  local pytest=(python -m pytest -m gpu tests/test_rnn_gpu.py tests/test_zoo_cell_gpu.py -q -p no:cacheprovider
                -o addopts=)
  local mem=0 race=0
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 "$cs" --tool memcheck --error-exitcode 1 --print-limit 20 \
    "${pytest[@]}" -k "not compile and not opcheck" || mem=$?
  echo "memcheck exit code: $mem"
  timeout 240 "$cs" --tool racecheck --error-exitcode 1 --print-limit 20 \
    "${pytest[@]}" -k "(float64_matches or backends_match_reference) and not triton" || race=$?
  echo "racecheck exit code: $race"
  [ "$mem" -eq 0 ] && [ "$race" -eq 0 ]
}

stage_zoo() {
  for backend in eager cuda triton; do
    timeout 30 hnrnn zoo --device cuda --seeds 1 --backend $backend --json "$OUT/zoo-$backend.json" | tail -9
    echo "zoo $backend exit code: ${PIPESTATUS[0]}"
  done
}

for stage in $STAGES; do
  case $stage in
    build|test|bench|zoo|sanitize) ;;
    *) echo "unknown stage '$stage' (build, test, bench, zoo, sanitize)"; exit 2 ;;
  esac
  say "$stage" | tee -a "$OUT/log.txt"
  "stage_$stage" 2>&1 | tee -a "$OUT/log.txt"
  rc=${PIPESTATUS[0]}
  echo "stage $stage exit code: $rc" | tee -a "$OUT/log.txt"
  [ "$stage" = build ] && [ "$rc" -ne 0 ] && exit 1
done
files=$(find "$OUT" -type f | wc -l)
echo "$files files in $OUT" | tee -a "$OUT/log.txt"
[ "$files" -le 8 ] || echo "warning: over 8 files; a device session brings back only 8" | tee -a "$OUT/log.txt"
exit 0
