"""`mmfast bench`: every runnable kernel variant against a float64 reference, then timed.

A quick health check of the native build on this machine (the demo runs it); the real
benchmarks, against oneDNN / ONNX Runtime / PyTorch in the same run, are in benchmarks/.
"""

from __future__ import annotations

import time

import numpy as np

from . import _C, ops

__all__ = ["run_kernel_check"]


def _softmax_ref(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _median_ms(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_kernel_check(repeats: int = 20) -> int:
    """Print a table; return 0 if every variant matches the reference, 1 otherwise."""
    rng = np.random.default_rng(0)
    rows, cols = 512, 4099  # a beam of 512 hypotheses over a 4k vocabulary; odd on purpose
    x = (rng.standard_normal((rows, cols)) * 8).astype(np.float32)
    ref = _softmax_ref(x)
    # float32 softmax: each output carries a few ulp from exp and the division, plus the
    # rounding of the length-`cols` sum, bounded by cols * eps relative to the row sum.
    tol = 8 * np.finfo(np.float32).eps * (1 + np.log2(cols))

    active = _C.active_variant()
    ok = True
    print(f"softmax {rows}x{cols} float32, {_C.get_num_threads()} thread(s), median of {repeats}")
    print(f"  {'variant':10} {'max rel err':>12} {'ms':>8} {'vs numpy':>9}")
    out = np.empty_like(x)

    def numpy_softmax() -> np.ndarray:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        r: np.ndarray = e / e.sum(axis=-1, keepdims=True)
        return r

    t_numpy = _median_ms(numpy_softmax, repeats)
    try:
        for variant in _C.runnable_variants():
            _C.set_variant(variant)
            ops.softmax(x, out=out)
            err = float(np.max(np.abs(out - ref) / np.maximum(ref, np.finfo(np.float32).tiny)))
            # relative error only where the reference is not denormal-small
            big = ref > 1e-30
            err = float(np.max(np.abs(out[big] - ref[big]) / ref[big]))
            good = err <= tol
            ok &= good
            t = _median_ms(lambda: ops.softmax(x, out=out), repeats)
            mark = "" if good else f"  FAIL (tolerance {tol:.1e})"
            star = " *" if variant == active else ""
            print(f"  {variant + star:10} {err:12.2e} {t:8.3f} {t_numpy / t:8.1f}x{mark}")
    finally:
        _C.set_variant(active)
    print(f"  numpy      {'':12} {t_numpy:8.3f} {1.0:8.1f}x   (* = active variant)")
    print("kernel check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
