# mmfast developer entry points. `make demo` and `make test` work from a fresh clone: they
# create .venv, install everything (torch CPU build, the package with its native extension),
# then run the demo / the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch is pinned here, not in the package metadata (which accepts a range): 2.13.0 is the CPU
# build this team's machines carry; a newer one would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

NATIVE_SOURCES := CMakeLists.txt pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: setup build demo test test-fast lint format bench bench-pytest sanitize fuzz clean

setup: $(VENV)/.deps-installed build

$(VENV)/.deps-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	# build requirements, so the editable install can skip build isolation (and rebuild fast)
	$(PIP) install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" ninja
	$(PIP) install --quiet --no-build-isolation -e ".[dev,export]"
	touch $@

# Rebuild the native extension when csrc/, CMakeLists.txt or pyproject.toml change.
build: $(VENV)/.native-built
# flock: two builds at once in the same build dir would corrupt it.
LOCK := $(shell command -v flock >/dev/null 2>&1 && echo flock /tmp/mmfast-build.lock)
$(VENV)/.native-built: $(VENV)/.deps-installed $(NATIVE_SOURCES)
	$(LOCK) $(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

# The demo: what this build is, a kernel check, then data -> training -> export -> runtime
# (models are cached in .demo/, so a second run skips the training).
demo: setup
	$(BIN)/mmfast info
	$(BIN)/mmfast bench --repeats 5
	$(BIN)/mmfast demo --workdir .demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# mmfast._C with ASan + UBSan (its own build dir and venv), then the kernel tests and the fuzz
# sample on it; any report fails. CI runs it (about 7 minutes on 2 cores).
sanitize: setup
	PY=$(BIN)/python bash tests/sanitize.sh

# The long fuzz run: 15000 inputs for each of the 7 targets (>= 10^5 in all).
fuzz: setup
	MMFAST_FUZZ_EXAMPLES=$${MMFAST_FUZZ_EXAMPLES:-15000} $(BIN)/python -m pytest -q \
	  -p no:cacheprovider tests/test_fuzz.py tests/test_fuzz_inputs.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/clang-format --dry-run -Werror $$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/clang-format -i $$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

# Kernel benchmarks against their peers in the same run (see benchmarks/README.md).
bench: setup
	$(BIN)/python benchmarks/bench_conv.py
	$(BIN)/python benchmarks/bench_attention.py

# The same kernels plus the captioner end to end through pytest-benchmark, one group per shape,
# saved as JSON under .benchmarks/ (compare runs with --benchmark-compare; benchmarks/README.md).
# BENCH_ARGS="--threads 2", "-k conv", "--benchmark-compare-fail=median:10%", ...
bench-pytest: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-autosave $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache .mypy_cache
