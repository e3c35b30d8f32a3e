"""`mmfast bench`: every native op on every runnable kernel variant against a float64
reference, with a rounding-error bound, then timed.

A quick health check of the native build on this machine (the demo runs it); the benchmarks
against oneDNN / ONNX Runtime / PyTorch, in the same run, are in benchmarks/.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _C, ops
from ._checks import positive_int
from .ops._winograd_bound import winograd_error_bound

__all__ = ["MAX_REPEATS", "run_kernel_check"]

EPS = float(np.finfo(np.float32).eps)
MAX_REPEATS = 10_000  # timed runs per op and variant (a bound on how long the check takes)


@dataclass
class _Case:
    name: str
    run: Callable[[], np.ndarray]  # the op in float32
    ref: np.ndarray  # float64 reference
    bound: np.ndarray  # first-order float32 rounding bound per element


def _softmax_case(rng: np.random.Generator) -> _Case:
    rows, cols = 512, 4099  # a beam of 512 hypotheses over a 4k vocabulary; odd on purpose
    x = (rng.standard_normal((rows, cols)) * 8).astype(np.float32)
    x64 = x.astype(np.float64)
    d = x64 - x64.max(-1, keepdims=True)
    ref = np.exp(d) / np.exp(d).sum(-1, keepdims=True)
    # exp of a rounded difference, ~2 ulp of exp, the division, and the length-`cols` sum
    # spread over 16 lanes
    bound = EPS * (4 + np.abs(d) / 2 + cols / 16 + 5) * ref
    out = np.empty_like(x)
    return _Case(f"softmax {rows}x{cols}", lambda: ops.softmax(x, out=out), ref, bound)


def _conv_cases(rng: np.random.Generator) -> list[_Case]:
    """A 3x3 layer on both CPU algorithms, each against its own bound."""
    n, c, h, w, m, k = 1, 32, 28, 28, 48, 3
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((n, m, h, w)) + b.astype(np.float64)[None, :, None, None]
    mag = np.zeros((n, m, h, w)) + np.abs(b.astype(np.float64))[None, :, None, None]
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + h, j : j + w]
            ref += np.einsum("nchw,mc->nmhw", patch, wt[:, :, i, j].astype(np.float64))
            mag += np.einsum("nchw,mc->nmhw", np.abs(patch), np.abs(wt[:, :, i, j]).astype(float))
    direct_bound = (c * k * k + 2) * EPS * mag  # a length-K float32 dot product (Higham)
    wino_bound = winograd_error_bound(x, wt, b, (1, 1, 1, 1))
    cases = []
    for algorithm, bound in (("direct", direct_bound), ("winograd", wino_bound)):
        conv = ops.Conv2d(wt, b, padding=1, algorithm=algorithm)
        out = np.empty(ref.shape, np.float32)
        name = f"conv2d 3x3 {c}->{m} @{h} {algorithm}"
        cases.append(_Case(name, functools.partial(conv, x, out=out), ref, bound))
    return cases


def _attention_case(rng: np.random.Generator) -> _Case:
    b, h, lq, lk, d = 1, 4, 67, 131, 40
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(np.float32) for n in (lq, lk, lk))
    scale = 1 / np.sqrt(d)
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = p @ v.astype(np.float64)
    # score error <= D*eps*scale*|q||k|; it moves p by twice that relatively; plus the sums
    ds = d * EPS * scale * np.einsum("bhid,bhjd->bhij", np.abs(q), np.abs(k)).max(-1)
    pv = p @ np.abs(v.astype(np.float64))
    bound = (2 * ds[..., None] + (lk + 8) * EPS) * pv + EPS * np.abs(ref)
    out = np.empty(ref.shape, np.float32)
    return _Case(f"attention {lq}x{lk} d{d}", lambda: ops.attention(q, k, v, out=out), ref, bound)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_kernel_check(repeats: int = 20) -> int:
    """Print a table; return 0 if every op on every variant is within its bound, 1 otherwise.

    repeats: timed runs per op and variant (1..MAX_REPEATS), the median reported."""
    repeats = positive_int("repeats", repeats, at_most=MAX_REPEATS)
    rng = np.random.default_rng(0)
    cases = [_softmax_case(rng), *_conv_cases(rng), _attention_case(rng)]
    active = _C.active_variant()
    ok = True
    print(
        f"{_C.get_num_threads()} thread(s), median of {repeats}; err/bound = worst error over "
        "its float32 rounding bound (float64 reference), must be <= 1"
    )
    print(f"  {'op':35} {'variant':10} {'err/bound':>9} {'ms':>8}")
    try:
        for case in cases:
            for variant in _C.runnable_variants():
                _C.set_variant(variant)
                y = case.run()
                worst = float(np.max(np.abs(y - case.ref) / (case.bound + 1e-37)))
                good = bool(worst <= 1.0)
                ok &= good
                t = _median_ms(case.run, repeats)
                star = " *" if variant == active else ""
                flag = "" if good else "  FAIL"
                print(f"  {case.name:35} {variant + star:10} {worst:9.3f} {t:8.3f}{flag}")
    finally:
        _C.set_variant(active)
    print("  (* = the variant this CPU uses)")
    print("kernel check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
