"""pytest-benchmark set-up for benchmarks/test_*.py: threads, allocator, machine info.

    pytest benchmarks --benchmark-only [--threads 1] [--benchmark-autosave]

Not collected by the normal test run (pyproject's testpaths is tests/). What this file fixes
for every benchmark of the session, so that saved runs compare like with like:
- threads: --threads N (default 1) for torch, mmfast and every ONNX Runtime session, part of
  each benchmark's name and group (--threads 1,2 runs everything at 1, then at 2 threads);
- idle pool threads sleep: torch's OpenMP workers (OMP_WAIT_POLICY=PASSIVE unless set), and
  numpy's OpenBLAS runs on 1 thread (OPENBLAS_NUM_THREADS=1 unless set): the benchmarks run
  one after the other, and spinning workers of one would take the core of the next;
- glibc malloc's mmap/trim thresholds raised as the bench scripts do (_common.tune_allocator),
  set here with mallopt() instead of the scripts' re-exec;
- the machine (CPU model, family/model, AVX-512/AMX flags, CPUs allowed, threads, kernel
  variant, versions) goes into the saved JSON's machine_info, the load average at start and
  end next to it; each benchmark adds its own extra_info (GFLOP/s, err/bound, ...).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (bench_e2e does the same)
# numpy's OpenBLAS (the preprocessing's resize products, the same for both e2e peers) on one
# thread, as bench_serve runs it: its spinning threads otherwise fight the pools measured here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads

from _common import _MALLOC_ENV


def _tune_allocator() -> str:
    """The thresholds of _common.tune_allocator, in this process. Setting its environment
    variables too makes the scripts' own tune_allocator() (run when test files import them) a
    no-op instead of a re-exec of pytest."""
    if os.environ.get("MMFAST_BENCH_ALLOCATOR") == "default":
        return "glibc malloc defaults (MMFAST_BENCH_ALLOCATOR=default)"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default allocator (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    int_max = 2**31 - 1  # mallopt takes an int
    trim = min(int(_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]), int_max)
    mmap = min(int(_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]), int_max)
    ok = libc.mallopt(m_trim_threshold, trim) and libc.mallopt(m_mmap_threshold, mmap)
    os.environ.update(_MALLOC_ENV)
    state = "ok" if ok else "refused"
    return f"glibc mallopt(M_MMAP_THRESHOLD={mmap}, M_TRIM_THRESHOLD={trim}): {state}"


ALLOCATOR = _tune_allocator()
LOAD_AT_START = os.getloadavg()[0]  # the other jobs on the machine when the session began


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--threads",
        default="1",
        help="intra-op threads for torch, mmfast and ONNX Runtime in every benchmark (default "
        "1); a comma-separated list (1,2) runs everything once per count",
    )


def thread_counts(config: pytest.Config) -> list[int]:
    text = config.getoption("threads")
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        raise pytest.UsageError(f"--threads: expected counts like 1 or 1,2, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise pytest.UsageError(f"--threads: counts must be >= 1, got {text!r}")
    return counts


def pytest_configure(config: pytest.Config) -> None:
    thread_counts(config)  # a bad --threads is a usage error before anything runs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The thread count is a (session-scoped) parameter, so it is part of every benchmark's
    name: --benchmark-compare only matches runs made with the same count."""
    if "threads" in metafunc.fixturenames:
        counts = thread_counts(metafunc.config)
        ids = [f"{n}thr" for n in counts]
        metafunc.parametrize("threads", counts, ids=ids, indirect=True, scope="session")


@pytest.fixture(scope="session")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """The thread count, applied to torch and mmfast while its benchmarks run (ORT sessions
    take it as intra_op_num_threads when they are built)."""
    import torch

    import mmfast

    n = request.param
    before = (torch.get_num_threads(), mmfast.get_num_threads())
    torch.set_num_threads(n)
    mmfast.set_num_threads(n)
    yield n
    torch.set_num_threads(before[0])
    mmfast.set_num_threads(before[1])


def _cpu() -> dict[str, Any]:
    """Model name, family/model and the flags that pick kernels, from /proc/cpuinfo (Linux)."""
    info: dict[str, Any] = {"machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
    except OSError:
        return info
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in first.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    info |= {
        "model_name": fields.get("model name"),
        "vendor": fields.get("vendor_id"),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "flags": sorted(
            flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile"}
        ),
    }
    return info


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """What the run's numbers depend on. Only stable facts: --benchmark-compare warns when the
    machine_info of two runs differ (a different CPU, thread count or kernel variant should)."""
    import onnxruntime as ort
    import torch

    import mmfast
    from mmfast import _C

    machine_info["mmfast_bench"] = {
        "cpu": _cpu(),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),  # taskset -c 1 shows here
        "threads": thread_counts(config),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "allocator": ALLOCATOR,
        "mmfast": mmfast.__version__,
        "mmfast_kernel_variant": _C.active_variant(),
        "mmfast_kernel_env": os.environ.get("MMFAST_KERNEL"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    """How busy the machine was (shared machines: read a run's numbers against this)."""
    output_json["mmfast_bench_load_average_1min"] = {
        "start": LOAD_AT_START,
        "end": os.getloadavg()[0],
    }
