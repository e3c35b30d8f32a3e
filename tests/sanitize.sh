#!/usr/bin/env bash
# `make sanitize`: mmfast._C built with AddressSanitizer + UndefinedBehaviorSanitizer (its own
# build directory and virtual environment, never the .venv one), then the kernel tests and the
# fuzz sample run on it. Any report stops the run (-fno-sanitize-recover, halt_on_error).
#   bash tests/sanitize.sh [pytest args...]      (MMFAST_FUZZ_EXAMPLES=N for a longer fuzz run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
SAN=build/sanitize
mkdir -p "$SAN"
# A venv that sees .venv's packages (torch, numpy, pytest...) through a .pth line, but not the
# editable mmfast there: a .pth-added directory's own .pth files are not processed.
if [ ! -x "$SAN/venv/bin/python" ]; then
  "$PY" -m venv "$SAN/venv"
  site=$("$SAN/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/mmfast-deps.pth"
fi
MMFAST_CUDA=OFF "$SAN/venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
  -Ccmake.define.MMFAST_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo -Cbuild-dir="$SAN/cmake" \
  --force-reinstall . >"$SAN/build.log" 2>&1 || {
  grep -v "WARNING: Location" "$SAN/build.log" | tail -40
  echo "sanitize: the ASan/UBSan build failed" >&2
  exit 1
}
# The interpreter is not instrumented: the runtimes are preloaded. Python keeps objects alive at
# exit on purpose, so leak checking is off; everything else stops at the first report.
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:verify_asan_link_order=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export MMFAST_FUZZ_EXAMPLES="${MMFAST_FUZZ_EXAMPLES:-150}"
# From outside the source tree, so `mmfast` is the sanitized build.
tests="$PWD/tests"
cd "$SAN"
so=$(venv/bin/python -c "import mmfast; print(mmfast._C.__file__)")
# A stale or uninstrumented build must not pass for a sanitized one. The symbol table is read
# whole first: `nm | grep -q` under pipefail fails at random (grep exits at its first match, nm
# then dies of SIGPIPE), which is how CI once called an instrumented build uninstrumented.
syms=$(nm -D "$so")
if [[ $syms != *__asan_init* || $syms != *__ubsan_handle* ]]; then
  echo "sanitize: $so is not instrumented" >&2
  exit 1
fi
echo "sanitized build: $so"
venv/bin/python -m pytest -q -p no:cacheprovider -m "not export and not cuda" \
  -c "$tests/../pyproject.toml" --rootdir "$tests/.." \
  "$tests/test_softmax.py" "$tests/test_attention.py" "$tests/test_conv2d.py" \
  "$tests/test_threading.py" "$tests/test_reliability.py" "$tests/test_fuzz.py" \
  "$tests/test_bf16.py" "$tests/test_conv2d_winograd.py" "$@"
