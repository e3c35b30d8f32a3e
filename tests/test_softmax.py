"""mmfast.ops.softmax / log_softmax against a float64 reference, on every kernel variant."""

from __future__ import annotations

import functools
from decimal import Decimal, localcontext
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmfast
from mmfast import _C, ops

EPS = float(np.finfo(np.float32).eps)
U = EPS / 2  # float32 unit roundoff (round to nearest)
LANES = {"avx512": 16, "avx2": 8, "portable": 8}
# avx512/avx2 evaluate exp's fmadd() as one fused op; portable as a*b + c (two roundings, or
# fused where the compiler contracts it: the two-rounding bound covers both)
FUSED = {"avx512": True, "avx2": True, "portable": False}
REF = 2.0**-40  # the float64 reference's own relative error (< 1e-14), far below any bound

# Error bound of the kernel (csrc/softmax/softmax_cpu.cpp, exp in csrc/common/simd.h) against
# float64, per element of a row x[0..n) with m = max x, q = exp(x - m), S = sum q, p64 = q / S:
#   d  = fl(x - m)                         |d - (x - m)| <= u|x - m|
#   e  = exp_kernel(d) = q (1 + t)         |t| <= T = (1 + E)exp(u|x - m|) - 1, E = exp_error_bound
#                                          (t = 0 at x = m: exp(0) = 1 exactly; d < -87
#                                          flushes e to 0: t = -1, q < 1.7e-38 there)
#   s  = W lane sums, then a log2(W) tree  s = S (1 + sig), 1 + sig <= (1 + A)(1 + g_K),
#                                          A = sum p64 T, g_K = Ku/(1 - Ku), K = ceil(n/W)-1+log2 W
#   p  = fl(e * fl(1 / s))                 |p - p64| <= rel p64 + 2^-150 (a subnormal p's rounding)
#                                          rel = (1 + T)(1 + u)^2 / (1 - sig) - 1
# To first order rel = 2E + g_K + 2u + u(|x - m| + mean_p|x - m|): the exp polynomial, the
# lane-wise sum, the reciprocal and the product, and the rounding of x - m.
# log_softmax: lp = fl(x - fl(m + logf(s))), lp64 = x - m - log S. With l = -log(1 - sig)
# >= |log s - log S|, L = log S + l, logf within 1 ulp (glibc: 0.82), two subtractions rounded:
#   |lp - lp64| <= D (1 + u) + u|lp64|,   D = l + 2uL + u(|m| + L(1 + 2u)).


@functools.cache
def exp_error_bound(fused: bool) -> float:
    """Relative error bound E of the kernel's exp (csrc/common/simd.h) on d in [-87, 0], derived
    from its polynomial: |exp_kernel(d) / e^d - 1| <= (1 + a)(1 + b)e^rho - 1 with

    rho: range reduction d = n ln2 + r, |n| <= 126: Cody-Waite's d - n C1 is exact, its
      (C1 - C2) misses ln2 by |Δ| (computed in 40 digits), fl() of the last step rounds;
    a: the approximation error of the float32-coefficient polynomial P(r) ~ e^r, |r| <= R,
      measured in float64 on a dense grid, plus the largest step between grid neighbours
      (what it could rise between them);
    b: the rounding of P's float32 Horner evaluation, a running error bound evaluated in
      float64 over the same grid (one rounding per fmadd when fused, two when not).
    The scaling by 2^n is exact (n >= -126: no subnormals). About 2u; the kernel measures about
    1.4u (test_exp_within_derived_bound).
    """
    # the kernel's float32 constants, exactly
    coef = np.float32([1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                       1.6666665459e-1, 5.0000001201e-1]).tolist()  # fmt: skip
    c1, c2, log2e = np.float32([0.693359375, 2.12194440e-4, 1.44269504088896341]).tolist()
    with localcontext() as ctx:
        ctx.prec = 40
        ln2 = Decimal(2).ln()
        delta = float(abs(Decimal(c1) - Decimal(c2) - ln2))
        # n = round(fl(d log2e)) is within 1/2 + dt of d/ln2 for |d| <= 87
        dt = 87 * (float(abs(Decimal(log2e) - 1 / ln2)) + U * log2e)
    # the reduced r = d - n (C1 - C2), rounded (and n C2 rounded first when not fused)
    n_c2 = 0.0 if fused else U * 126 * c2
    r_max = (float(ln2) * (0.5 + dt) + 126 * delta + n_c2) * (1 + U)
    rho = 126 * delta + n_c2 + U * r_max  # |r - (d - n ln2)|
    r = np.linspace(-r_max, r_max, 100_001)
    ar = np.abs(r)
    h, err = np.full_like(r, coef[0]), np.zeros_like(r)
    for c in coef[1:]:  # h = fl(h r + c): |error| carried times |r|, plus one or two roundings
        prod = (np.abs(h) + err) * ar
        h = h * r + c
        err = ar * err + (0.0 if fused else U * prod)
        err += U * (np.abs(h) + err)
    t = h * r  # t = fl(h r)
    err_t = ar * err + U * (np.abs(t) + ar * err)
    v = t * r + r  # v = fl(t r + r)
    err_v = ar * err_t + (0.0 if fused else U * (np.abs(t * r) + ar * err_t))
    err_v += U * (np.abs(v) + err_v)
    y = v + 1  # y = fl(v + 1) = P(r)
    err_y = err_v + U * (np.abs(y) + err_v)
    approx = y * np.exp(-r) - 1
    a = float(np.max(np.abs(approx)) + np.max(np.abs(np.diff(approx))))
    b = float(np.max(err_y / y) + np.max(np.abs(np.diff(err_y / y))))
    return (1 + a) * (1 + b) * float(np.exp(rho)) - 1


def sum_error_bound(n: int, variant: str) -> float:
    """Relative rounding bound g_K of the kernel's sum of n non-negative terms: each of W lanes
    adds ceil(n/W) terms in sequence (the first onto 0, exactly), then a log2(W)-deep tree:
    every term passes at most K = ceil(n/W) - 1 + log2(W) roundings (Higham's gamma_K)."""
    w = LANES[variant]
    k = int(np.ceil(n / w)) - 1 + int(np.log2(w))
    return k * U / (1 - k * U)


class Bounds(NamedTuple):
    """Float64 softmax / log-softmax of a float32 x and the derived bounds, each shaped like x."""

    p64: np.ndarray
    rel: np.ndarray  # |p - p64| <= rel p64 + 2^-150
    lp64: np.ndarray
    lp_abs: np.ndarray  # |lp - lp64| <= lp_abs
    flushed: np.ndarray  # fl(x - m) < -87: the kernel's exp gives 0, so p = 0


def softmax_bounds(x: np.ndarray, variant: str, axis: int = -1) -> Bounds:
    """The derivation above, row by row along `axis`. Rows with no finite entry are not
    covered (NaN by design)."""
    x32 = np.moveaxis(x, axis, -1)  # (..., n): rows along the last axis
    x64 = x32.astype(np.float64)
    n = x64.shape[-1]
    m = x64.max(axis=-1, keepdims=True)
    masked = np.isneginf(x64)
    dist = np.where(masked, 0.0, m - x64)  # |x - m|
    q = np.exp(x64 - m)
    s = q.sum(axis=-1, keepdims=True)
    p64, lp64 = q / s, x64 - m - np.log(s)
    flushed = (x32 - m.astype(np.float32)) < -87
    e_rel = exp_error_bound(FUSED[variant])
    # exp's error: none at the max (exp(0) = 1 exactly); all of q where flushed (masked too)
    t = np.where(
        flushed, 1.0, np.where(dist == 0, 0.0, (1 + e_rel) * np.exp(U * np.minimum(dist, 88)) - 1)
    )
    a = (p64 * t).sum(axis=-1, keepdims=True)
    sig = (1 + a) * (1 + sum_error_bound(n, variant)) - 1
    rel = (1 + t) * (1 + U) ** 2 / (1 - sig) - 1 + REF
    ell = -np.log1p(-sig)
    big_l = np.log(s) + ell
    shift_err = ell + 2 * U * big_l + U * (np.abs(m) + big_l * (1 + 2 * U))
    lp_abs = shift_err * (1 + U) + U * np.abs(lp64) + REF * (np.abs(lp64) + np.abs(m) + 1)
    return Bounds(*(np.moveaxis(v, -1, axis) for v in (p64, rel, lp64, lp_abs, flushed)))


def bound_ratios(
    x: np.ndarray, p: np.ndarray, lp: np.ndarray, variant: str, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Each element's error over its bound, for softmax p and log-softmax lp of x (<= 1
    holds). Flushed entries must be exactly 0 and masked log-softmax entries exactly -inf
    (ratio 0, else inf): a bound of 100% there would only pad the statistics."""
    b = softmax_bounds(x, variant, axis)
    p_ratio = np.abs(p - b.p64) / (b.rel * b.p64 + 2.0**-150)
    p_ratio[b.flushed] = np.where(p[b.flushed] == 0, 0.0, np.inf)
    exact = np.isneginf(b.lp64)
    lp_ratio = np.zeros_like(b.lp64)
    lp_ratio[exact] = np.where(lp[exact] == -np.inf, 0.0, np.inf)
    lp_ratio[~exact] = np.abs(lp[~exact] - b.lp64[~exact]) / b.lp_abs[~exact]
    return p_ratio, lp_ratio


def assert_within_bound(ratio: np.ndarray, what: str) -> float:
    """The largest error/bound ratio, after asserting it is at most 1 (NaN fails too)."""
    worst = float(np.max(ratio)) if ratio.size else 0.0
    where = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert not np.isnan(ratio).any() and worst <= 1, f"{what}: {worst:.3g}x the bound at {where}"
    return worst


def check_softmax(x: np.ndarray, variant: str, axis: int = -1) -> tuple[float, float]:
    """softmax and log_softmax of x within the derived bound; returns the worst ratios."""
    p = ops.softmax(x, axis=axis)
    assert p.dtype == np.float32 and p.shape == x.shape
    lp = ops.log_softmax(x, axis=axis)
    p_ratio, lp_ratio = bound_ratios(x, p, lp, variant, axis)
    return assert_within_bound(p_ratio, "softmax"), assert_within_bound(lp_ratio, "log_softmax")


@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 300),
    scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3, 1e4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_match_float64(variant: str, rows: int, cols: int, scale: float, seed: int):
    x = (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)
    check_softmax(x, variant)


@pytest.mark.parametrize("shape,axis", [((3, 4, 5), 0), ((3, 4, 5), 1), ((2, 7), 0), ((4099,), 0)])
def test_any_axis(variant: str, shape: tuple[int, ...], axis: int):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 5
    check_softmax(x, variant, axis)


def test_long_rows_use_both_threads_and_agree(variant: str):
    x = np.random.default_rng(2).standard_normal((257, 50_021)).astype(np.float32) * 3
    check_softmax(x, variant)


def test_exp_within_derived_bound(variant: str):
    # softmax([0, d]) returns exp_kernel(d) itself where e^d <= 2^-24 (1 + e rounds to 1, so
    # the sum is 1 and the division exact): every 8th float32 d in [-87, -16.7], which spans
    # the whole reduced range |r| <= ln2/2 at the largest |n| (the reduction's error grows
    # with |n|)
    lo, hi = np.array([-16.7, -87.0], np.float32).view(np.int32)
    d = np.arange(lo, hi + 1, 8, dtype=np.int32).view(np.float32)
    x = np.zeros((d.size, 2), np.float32)
    x[:, 1] = d
    p = ops.softmax(x)
    assert (p[:, 0] == 1).all()
    worst = np.max(np.abs(p[:, 1] / np.exp(d.astype(np.float64)) - 1))
    bound = exp_error_bound(FUSED[variant])
    assert worst <= bound
    assert worst > bound / 2  # the derived bound is not loose either


def random_logits(rng: np.random.Generator) -> np.ndarray:
    """(rows, n) float32 logits: n log-uniform in [1, 4100], scale log-uniform in [0.01, 50],
    none, 20% or 90% of entries masked to -inf (each row keeps one finite entry)."""
    rows = int(rng.integers(1, 9))
    n = int(np.exp(rng.uniform(0, np.log(4100))))
    scale = float(np.exp(rng.uniform(np.log(0.01), np.log(50))))
    x = (rng.standard_normal((rows, n)) * scale).astype(np.float32)
    masked = rng.random((rows, n)) < rng.choice([0.0, 0.2, 0.9])
    masked[np.arange(rows), rng.integers(0, n, rows)] = False
    x[masked] = -np.inf
    return x


def test_error_bound_over_many_draws(variant: str):
    worst_p = worst_lp = worst_near = 0.0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        for _ in range(60):
            x = random_logits(rng)
            p_ratio, lp_ratio = bound_ratios(x, ops.softmax(x), ops.log_softmax(x), variant)
            worst_p = max(worst_p, assert_within_bound(p_ratio, f"softmax, seed {seed}"))
            worst_lp = max(worst_lp, assert_within_bound(lp_ratio, f"log_softmax, seed {seed}"))
            # where x - m is rounded by at most u, the exp / sum / division terms dominate
            near = np.abs(x.astype(np.float64) - x.max(axis=-1, keepdims=True)) <= 1
            worst_near = max(worst_near, float(p_ratio[near].max()))
    # not vacuous: the worst error reaches at least 1/8 of its bound (about 0.85 here, 0.45
    # near the max; there it falls to ~0.06 for n > 1000, where the sum's worst case, K u,
    # outgrows its typical sqrt(K) u)
    assert min(worst_p, worst_lp, worst_near) > 1 / 8, (worst_p, worst_lp, worst_near)


def test_bound_catches_perturbed_outputs(variant: str):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 1000)) * 6).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = -np.inf
    p, lp = ops.softmax(x), ops.log_softmax(x)
    b = softmax_bounds(x, variant)
    p_ratio, lp_ratio = bound_ratios(x, p, lp, variant)
    assert p_ratio.max() <= 1 and lp_ratio.max() <= 1
    # twice the bound's own size on top of the output
    p_ratio, _ = bound_ratios(x, p * (1 + 2 * b.rel), lp, variant)
    assert p_ratio.max() > 1
    # a sum missing any one of the W lanes: caught on nearly every row (the misses: lanes that
    # hold under ~1e-5 of their row's mass, less than the bound itself)
    w = LANES[variant]
    caught = []
    for j in range(w):
        lost = p[:, j::w].sum(axis=1, dtype=np.float64, keepdims=True)
        p_ratio, lp_ratio = bound_ratios(x, p / (1 - lost), lp - np.log1p(-lost), variant)
        caught.append((p_ratio.max(axis=1) > 1) & (lp_ratio.max(axis=1) > 1))
    assert np.mean(caught) > 0.95


def test_non_contiguous_input(variant: str):
    base = np.random.default_rng(3).standard_normal((20, 64)).astype(np.float32)
    x = base[::3, 1::2]  # strided both ways
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(ops.softmax(x), ops.softmax(np.ascontiguousarray(x)), rtol=0)


def test_masked_entries_and_degenerate_rows(variant: str):
    x = np.array(
        [
            [0.0, -np.inf, 1.0, -np.inf],  # masked logits get probability 0
            [-np.inf] * 4,  # nothing left: NaN, as numpy/scipy/torch
            [3.0, 3.0, 3.0, 3.0],
            [np.nan, 0.0, 1.0, 2.0],  # NaN poisons its row
        ],
        dtype=np.float32,
    )
    p = ops.softmax(x)
    e = np.exp(1.0)
    np.testing.assert_allclose(p[0], [1 / (1 + e), 0, e / (1 + e), 0], rtol=4 * EPS)
    assert np.isnan(p[1]).all()
    np.testing.assert_array_equal(p[2], np.full(4, 0.25, np.float32))
    assert np.isnan(p[3]).all()
    lp = ops.log_softmax(x[:1])
    assert lp[0, 1] == -np.inf and lp[0, 3] == -np.inf


def test_exp_range_edges(variant: str):
    # x - max spans the whole float32 exp range, including the flush-to-zero region.
    x = np.array([[0.0, -10.0, -50.0, -86.9, -87.5, -100.0, -1e30]], dtype=np.float32)
    p = ops.softmax(x)
    b = softmax_bounds(x, variant)
    assert (p[b.flushed] == 0).all() and b.flushed.sum() == 3  # documented flush below exp(-87)
    # m = 0: x - m is exact, so only the exp, sum and division terms of the bound remain
    e_rel = exp_error_bound(FUSED[variant])
    sig = (1 + e_rel) * (1 + sum_error_bound(x.shape[1], variant)) - 1
    rel = (1 + e_rel) * (1 + U) ** 2 / (1 - sig) - 1
    np.testing.assert_allclose(p[~b.flushed], b.p64[~b.flushed], rtol=rel, atol=0)


def test_out_and_in_place(variant: str):
    x = np.random.default_rng(4).standard_normal((6, 33)).astype(np.float32)
    expected = ops.softmax(x)
    out = np.empty_like(x)
    assert ops.softmax(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    y = x.copy()
    ops.softmax(y, out=y)
    np.testing.assert_array_equal(y, expected)
    out_t = np.empty((33, 6), np.float32).T  # non-contiguous out
    ops.softmax(x, out=out_t)
    np.testing.assert_array_equal(out_t, expected)


def test_empty():
    assert ops.softmax(np.empty((0, 5), np.float32)).shape == (0, 5)
    assert ops.log_softmax(np.empty((3, 0), np.float32)).shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"x": np.zeros((2, 3), np.float64)}, TypeError, "x: expected float32"),
        ({"x": [[1.0, 2.0]]}, TypeError, "x: expected a numpy array"),
        ({"x": np.array(1.0, np.float32)}, ValueError, "x: expected at least 1"),
        ({"x": np.zeros((2, 3), np.float32), "axis": 2}, ValueError, "axis: 2 is out of range"),
        ({"x": np.zeros((2, 3), np.float32), "axis": 1.0}, TypeError, "axis: expected an int"),
        (
            {"x": np.zeros((2, 3), np.float32), "out": np.zeros((3, 2), np.float32)},
            ValueError,
            "out: expected shape",
        ),
        (
            {"x": np.zeros((2, 3), np.float32), "out": np.zeros((2, 3), np.float64)},
            TypeError,
            "out: expected float32",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str):
    with pytest.raises(exc, match=match):
        ops.softmax(**kwargs)


def test_read_only_and_overlapping_out():
    x = np.zeros((2, 4), np.float32)
    ro = np.zeros((2, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        ops.softmax(x, out=ro)
    buf = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="out: overlaps x"):
        ops.softmax(buf[:, :4], out=buf[:, 1:])


def test_native_layer_checks_too():
    # The C++ layer checks again (two-layer checking): bad calls raise, never crash.
    with pytest.raises(ValueError, match="x: expected float32"):
        _C.softmax(np.zeros((2, 2)), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="out: shape does not match"):
        _C.softmax(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="x: expected 2 dimensions"):
        _C.softmax(np.zeros(4, np.float32), np.zeros(4, np.float32))


def test_variant_selection():
    compiled = _C.compiled_variants()
    assert compiled[-1] == "portable"
    with pytest.raises(ValueError, match="variant: 'sse9' is not compiled"):
        _C.set_variant("sse9")
    assert _C.active_variant() == _C.runnable_variants()[0]  # the best runnable by default


def test_thread_count_does_not_change_results():
    x = np.random.default_rng(5).standard_normal((301, 1031)).astype(np.float32)
    n0 = mmfast.get_num_threads()
    try:
        mmfast.set_num_threads(1)
        one = ops.softmax(x)
        mmfast.set_num_threads(3)
        three = ops.softmax(x)
    finally:
        mmfast.set_num_threads(n0)
    np.testing.assert_array_equal(one, three)
    with pytest.raises(ValueError, match="n: must be >= 1"):
        mmfast.set_num_threads(0)


@pytest.mark.export
def test_torch_tensors_zero_copy_and_error_bound(variant: str):
    torch = pytest.importorskip("torch")
    for seed in range(4):  # the derived bound through the torch path (masked entries too)
        torch.manual_seed(seed)
        x = torch.randn(64, 1000) * (6 + 14 * seed)
        x[torch.rand(x.shape) < 0.2] = -torch.inf
        p = ops.softmax(x)
        assert isinstance(p, torch.Tensor) and p.dtype == torch.float32
        out = torch.empty_like(x)
        assert ops.log_softmax(x, out=out) is out
        p_ratio, lp_ratio = bound_ratios(x.numpy(), p.numpy(), out.numpy(), variant)
        assert_within_bound(p_ratio, f"softmax, seed {seed}")
        assert_within_bound(lp_ratio, f"log_softmax, seed {seed}")
        np.testing.assert_array_equal(out.numpy(), ops.log_softmax(x.numpy()))
    # zero copy: the output memory is the tensor's own
    y = x.clone()
    ops.softmax(y, out=y)
    torch.testing.assert_close(y, p, rtol=0, atol=0)
