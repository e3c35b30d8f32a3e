#!/usr/bin/env bash
# One device call: build mmfast with its CUDA kernels on the GPU machine, run the `cuda` tests
# (float64 references, torch SDPA / cuDNN), then the GPU benchmark. Made for the device tool:
#   run: bash benchmarks/gpu/check.sh        (timeout_s ~ 420; logs land in $OUT)
# Works on any machine with an NVIDIA GPU, nvcc, torch (CUDA), cmake, ninja, pybind11 and
# scikit-build-core: OUT defaults to ./gpu-check-out.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/../.."

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv 2>&1 | tee "$OUT/gpu.txt"
nvcc --version | tail -1

# Build: sm_90 only here (CI builds 80 and 90). A package prebuilt elsewhere for this Python
# can be carried in .gpu-site (saves the build's device time); its Python files are refreshed.
start=$(date +%s)
if [ -d .gpu-site/mmfast ] && [ -z "${REBUILD:-}" ]; then
  (cd mmfast && cp --parents $(find . -name "*.py") ../.gpu-site/mmfast/)  # ops/ too
  export PYTHONPATH="$PWD/.gpu-site"
  echo "using the prebuilt package in .gpu-site"
else
  export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
  MMFAST_CUDA=ON "$PY" -m pip install --quiet --no-build-isolation --no-deps \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Cbuild-dir=build/gpu-check \
    --target /tmp/mmfast-site . >"$OUT/build.log" 2>&1 || {
    tail -50 "$OUT/build.log"
    echo "BUILD FAILED"
    exit 1
  }
  export PYTHONPATH=/tmp/mmfast-site
fi
echo "build: $(($(date +%s) - start)) s"
(cd /tmp && "$PY" -c "import mmfast; print(mmfast.__file__); print(mmfast.cuda_status())")

(cd /tmp && timeout 60 "$PY" "$OLDPWD/benchmarks/gpu/diag_attention.py") 2>&1 | tee "$OUT/diag.log"

# Tests from a copy of tests/ outside the source tree, so `mmfast` is the built package.
rm -rf /tmp/mmfast-tests && cp -r tests /tmp/mmfast-tests && cp pyproject.toml /tmp/
start=$(date +%s)
(cd /tmp && timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider -c /tmp/pyproject.toml \
  /tmp/mmfast-tests/test_cuda_ops.py /tmp/mmfast-tests/test_cuda_build.py --maxfail=30 \
  2>&1 | tee "$OUT/tests.log" | tail -40)
echo "tests: $(($(date +%s) - start)) s"

start=$(date +%s)
timeout 200 "$PY" benchmarks/gpu/bench_gpu.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 \
  | tee "$OUT/bench.log"
echo "bench: $(($(date +%s) - start)) s"

# NCU=1: why is the attention kernel as fast as it is (throughputs, stall reasons).
if [ -n "${NCU:-}" ] && command -v ncu >/dev/null; then
  (cd /tmp && timeout 120 ncu -k regex:attention_mma --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section ComputeWorkloadAnalysis "$PY" "$OLDPWD/benchmarks/gpu/profile_one.py" \
    >"$OUT/ncu.txt" 2>&1)
  grep -E "Throughput|Stall|Occupancy|Warp Cycles|Issue|Registers|Block Limit|Pipe" \
    "$OUT/ncu.txt" | head -60
fi
