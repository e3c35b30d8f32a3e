"""Shared benchmark helpers: timing, the machine's fp32 matmul peak, allocator set-up."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

# The convolutions bench_conv.py times (ResNet-50 / MobileNet layers):
# (name, C, M, H=W, k, stride, pad, groups)
CONV_SHAPES = [
    ("3x3 64->64 @56", 64, 64, 56, 3, 1, 1, 1),
    ("3x3 128->128 @28", 128, 128, 28, 3, 1, 1, 1),
    ("3x3 256->256 @14", 256, 256, 14, 3, 1, 1, 1),
    ("3x3 512->512 @7", 512, 512, 7, 3, 1, 1, 1),
    ("1x1 64->256 @56", 64, 256, 56, 1, 1, 0, 1),
    ("1x1 256->64 @56", 256, 64, 56, 1, 1, 0, 1),
    ("7x7/2 3->64 @224", 3, 64, 224, 7, 2, 3, 1),
    ("dw 3x3 32ch @112", 32, 32, 112, 3, 1, 1, 32),
]

# glibc malloc hands big blocks back to the OS on free, so every fresh torch output of a few
# MB is page-faulted in again (up to 5x slower on large outputs). Benchmarks run with the
# thresholds raised so the baselines are measured at their best; re-exec'd before anything
# allocates. mmfast and ONNX Runtime write into preallocated outputs either way.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31)}


def tune_allocator() -> str:
    if any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.environ.update(_MALLOC_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return "glibc malloc with MALLOC_MMAP_THRESHOLD_=1GiB, MALLOC_TRIM_THRESHOLD_=2GiB"


def median_ms(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    """Median wall time of fn() in ms: warm-up, then `repeats` batches of enough calls to last
    min_time / repeats seconds each (short kernels are timed over several calls)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / repeats / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e3


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 7) -> float:
    """fp32 GEMM GFLOP/s on `threads` threads, n^3: the faster of torch's sgemm (oneDNN / MKL)
    and ONNX Runtime's MatMul (MLAS), each its best block of calls: the practical peak of this
    machine for the kernels compared here. Both, because neither library is fast everywhere
    (torch's sgemm reached only ~90 GFLOP/s on one Zen 5 core where MLAS reached ~200), and the
    best block, because a peak is what the core can do when nobody else is on it."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    best = best_ms(lambda: torch.mm(a, b, out=c), repeats)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
        so,
        providers=["CPUExecutionProvider"],
    )
    feeds = {"a": a.numpy(), "b": b.numpy()}
    best = min(best, best_ms(lambda: sess.run(None, feeds), repeats))
    return 2 * n**3 / (best * 1e-3) / 1e9


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls of fn() in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def cpu_line() -> str:
    """'model name, family F model M' of the first CPU (Linux /proc/cpuinfo), or the platform's
    processor string elsewhere."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or "unknown CPU"
    return (
        f"{info.get('model name', '?')}, family {info.get('cpu family', '?')} "
        f"model {info.get('model', '?')}"
    )
