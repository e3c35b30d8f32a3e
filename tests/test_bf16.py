"""precision="bf16" for conv2d and attention on the CPU, against float64 references.

Each output element is checked against its own error bound, computed in float64 from the
magnitudes of its inputs (derivations in csrc/conv2d/conv2d_cpu_bf16.h and
csrc/attention/attention_cpu_bf16.h). With u = 2^-8, bf16's unit roundoff (8 significant bits:
RNE errs by at most half an ulp, 2^-8 relative), and gamma_n = n 2^-24 / (1 - n 2^-24):

  conv2d:    |y - y64| <= (2u + u^2 + gamma_(K+1)) (sum_k |x_k||w_k| + |b|)
                          + K 2^-126 (max|x| + max|w| + 1)
  attention: |o - o64| <= (exp(2 delta_i) (1 + eta) - 1) sum_j p_ij |v_j|,
             delta_i = max_j |scale| (2u + u^2 + gamma_D) sum_x |q_ix||k_jx|
                       + 8 2^-24 (|s_ij| + |mask_ij| + max_j' |s_ij'|),
             eta = 2u + u^2 + 2 gamma_(Lk + Lk/96 + 2) + 2^-20

where y64, o64 are the float64 results of the *unrounded* float32 inputs. Every case runs on
both paths: the AVX512-BF16 kernels ("native", skipped on a CPU without them) and the portable
fallback (rounded inputs, float32 kernels; forced with the avx2 variant); the convolutions also
on both GEMM paths (spatial, channel-vectorised).

The bounds are shown not to be vacuous three ways: the bf16 results break float32's own bound
somewhere (so the rounding really happens), single products are checked bit for bit (round to
nearest *even*, not truncation), and emulated wrong kernels (accumulating in bf16 instead of
float32) break them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from conv_reference import conv2d_ref, conv2d_tolerance

from mmfast import _C, ops

U = 2.0**-8  # bf16 unit roundoff
U32 = 2.0**-24
TINY = 2.0**-126


def gamma(n: float) -> float:
    return n * U32 / (1 - n * U32)


def rne_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even) as float32, by bit arithmetic (finite a)."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


@pytest.fixture(params=["native", "fallback"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs on the AVX512-BF16 kernels and on the portable fallback."""
    previous = _C.active_variant()
    if request.param == "native":
        if not _C.bf16_native():
            pytest.skip("this CPU (or build) has no AVX512-BF16 kernels")
    else:
        _C.set_variant("avx2" if "avx2" in _C.runnable_variants() else "portable")
        assert not _C.bf16_native()
    try:
        yield request.param
    finally:
        _C.set_variant(previous)


# ---- conv2d -------------------------------------------------------------------------------------


def conv_bound(x, w, b, stride, pads, dilation, groups):
    cg = w.shape[1]
    k = 2 * ((cg + 1) // 2) * w.shape[2] * w.shape[3]  # the channel pairs' chain, zeros included
    mag = conv2d_ref(
        np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, pads, dilation, groups
    )
    absolute = k * TINY * (np.abs(x).max() + np.abs(w).max() + 1)
    return (2 * U + U * U + gamma(k + 1)) * mag + absolute


# (N, C, M, H, W, kernel, stride, pads (t, l, b, r), dilation, groups)
CONV_CASES = [
    (1, 16, 24, 12, 12, 3, 1, (1, 1, 1, 1), 1, 1),
    (2, 7, 9, 13, 11, 3, 2, (1, 0, 2, 1), 1, 1),  # odd channels (a zero partner), asymmetric pads
    (1, 8, 16, 15, 15, 3, 1, (2, 2, 2, 2), 2, 1),  # dilation
    (3, 12, 18, 9, 9, 3, 1, (1, 1, 1, 1), 1, 3),  # groups
    (2, 8, 8, 10, 10, 3, 1, (1, 1, 1, 1), 1, 8),  # depthwise
    (1, 8, 16, 10, 10, 3, 2, (1, 1, 1, 1), 1, 8),  # depthwise, channel multiplier 2, stride 2
    (1, 3, 16, 32, 32, 7, 2, (3, 3, 3, 3), 1, 1),  # the ResNet stem
    (2, 32, 40, 7, 7, 1, 1, (0, 0, 0, 0), 1, 1),  # 1x1
    (1, 64, 70, 7, 7, 3, 1, (1, 1, 1, 1), 1, 1),  # small image, many channels
    (1, 6, 10, 9, 20, 5, (1, 3), (2, 0, 1, 4), (2, 1), 2),  # unequal strides and dilations
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d_bf16_bound(case, path, conv_path):
    n, c, m, h, w_, k, stride, pads, dilation, groups = case
    stride, dilation = _pair(stride), _pair(dilation)
    rng = np.random.default_rng(sum(case[:6]))
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((m, c // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    kw = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)
    y = ops.conv2d(x, w, b, precision="bf16", **kw)
    assert y.dtype == np.float32
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    bound = conv_bound(x, w, b, stride, pads, dilation, groups)
    err = np.abs(y - ref)
    assert (err <= bound).all(), f"{(err > bound).sum()} outside; worst {(err / bound).max():.3g}"
    # Not float32 in disguise: somewhere past float32's own bound.
    assert (err > conv2d_tolerance(x, w, b, stride, pads, dilation, groups)).any()
    # Against the float64 convolution of the rounded inputs the rest is float32 accumulation.
    ref_r = conv2d_ref(rne_bf16(x), rne_bf16(w), b, stride, pads, dilation, groups)
    tol_r = conv2d_tolerance(rne_bf16(x), rne_bf16(w), b, stride, pads, dilation, groups)
    assert (np.abs(y - ref_r) <= tol_r).all()


def test_conv2d_bf16_strided_views_relu_and_out(path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 10, 14, 30)).astype(np.float32)[:, ::2, :, ::2]  # strided view
    w = rng.standard_normal((12, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    conv = ops.Conv2d(w, b, padding=1, activation="relu", precision="bf16")
    y = conv(x)
    out = np.full((2, 12, 14, 15 * 2), np.nan, np.float32)[..., ::2]  # strided out
    conv(x, out=out)
    np.testing.assert_array_equal(out, y)
    ref = np.maximum(conv2d_ref(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1), 0)
    bound = conv_bound(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert (np.abs(y - ref) <= bound).all()
    assert "precision='bf16'" in repr(conv)
    # 1x1 on a channel-strided view (rows contiguous): the native kernel reads x in place
    x1 = rng.standard_normal((2, 18, 6, 7)).astype(np.float32)[:, ::2]
    w1 = rng.standard_normal((20, 9, 1, 1)).astype(np.float32)
    y1 = ops.conv2d(x1, w1, b[:1].repeat(20), precision="bf16")
    ref1 = conv2d_ref(x1, w1, b[:1].repeat(20), (1, 1), (0,) * 4, (1, 1), 1)
    assert (
        np.abs(y1 - ref1) <= conv_bound(x1, w1, b[:1].repeat(20), (1, 1), (0,) * 4, (1, 1), 1)
    ).all()


@pytest.mark.parametrize("depthwise", [False, True])
def test_conv2d_bf16_rounds_to_nearest_even(path, depthwise):
    """One product per output, exact in float32: y must be bf16(x) * bf16(w) bit for bit."""
    t = 2.0**-8  # half an ulp of bf16 at 1
    xs = np.array(
        [1 + t, 1 + 3 * t, 1 + t + 2**-12, 1 + t - 2**-12, -(1 + 3 * t), 1.0, 3.0, 1 + 5 * t],
        np.float32,
    )
    # expected: ties to even (down, up), above / below the tie, the sign, exact values
    want_x = np.array(
        [1.0, 1 + 4 * t, 1 + 2 * t, 1.0, -(1 + 4 * t), 1.0, 3.0, 1 + 4 * t], np.float32
    )
    np.testing.assert_array_equal(rne_bf16(xs), want_x)
    wv = np.float32(1 + 3 * t)  # rounds up to 1 + 2^-6 (a tie, to even)
    if depthwise:  # one channel per group
        x = xs.reshape(1, 1, 1, -1)
        w = np.full((1, 1, 1, 1), wv, np.float32)
    else:  # two channels, the second weighted by 0: one product per output still
        x = np.stack([xs, np.full_like(xs, 7.0)]).reshape(1, 2, 1, -1)
        w = np.array([wv, 0.0], np.float32).reshape(1, 2, 1, 1)
    y = ops.conv2d(x, w, precision="bf16")
    expected = (want_x.astype(np.float64) * (1 + 4 * t)).astype(np.float32)
    np.testing.assert_array_equal(y.ravel(), expected)


# The AVX512-BF16 kernel's special paths, each with the shapes that reach it (the bound is the same:
# a tap pair's zero partner is a zero weight, as a channel pair's is):
#  - 1x1 "direct mode" (stride 1, unpadded, rows contiguous): B converted per chunk of positions
#    (up to 16 tiles of 48, fewer for many channels); several chunks and a partial one, odd
#    channel counts, output channels not a multiple of the 8-row panel, groups, a chunk cut to
#    one tile by the channel count;
#  - depthwise, stride 1 (no row dilation, at most 16 filter rows): K pairs are taps (kw, kw + 1)
#    of a filter row; 3x3, 5x5, 7x7 (the fixed blocks) and any other filter (the generic one),
#    odd and even widths, dilation along w, asymmetric pads, a channel multiplier, partial vectors;
#  - tap-pair mode (3 to 15 channels a group, an odd count, filters where pairing taps wastes
#    less than pairing channels): pairs (kh, kw)+(kh, kw+1), the odd last column paired down the
#    rows, the last tap alone; stride 1 and 2 (its own fill), other strides and dilations (the
#    generic fill), even and odd filter sides, groups.
# (N, C, M, H, W, kernel (kh, kw), stride, pads (t, l, b, r), dilation, groups)
PATH_CASES = [
    (2, 9, 20, 23, 37, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 851 positions: 2 chunks
    (1, 300, 12, 5, 43, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 150 pairs: 1-tile chunks
    (1, 12, 18, 9, 21, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),  # groups, 2 pairs a group
    (2, 6, 6, 13, 37, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),
    (1, 4, 8, 9, 70, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 4),  # channel multiplier 2
    (1, 3, 3, 8, 20, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 3),
    (1, 4, 4, 11, 23, (2, 4), (1, 1), (0, 1, 1, 2), (1, 1), 4),  # even width, generic block
    (1, 2, 2, 7, 30, (3, 5), (1, 1), (1, 4, 1, 4), (1, 2), 2),  # dilation along w
    (1, 2, 4, 20, 9, (16, 1), (1, 1), (7, 0, 8, 0), (1, 1), 2),  # 16 rows, one lone tap a row
    (1, 3, 3, 6, 5, (2, 3), (1, 1), (0, 0, 0, 0), (1, 1), 3),  # narrower than a vector
    (2, 3, 24, 37, 41, (7, 7), (2, 2), (3, 3, 2, 3), (1, 1), 1),  # the stem, odd sides
    (1, 3, 10, 17, 35, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # stride 1
    (1, 6, 12, 15, 33, (5, 5), (2, 2), (2, 2, 2, 2), (1, 2), 2),  # groups, dilation along w
    (1, 5, 9, 14, 19, (4, 3), (2, 1), (1, 1, 2, 1), (2, 1), 1),  # even KH: no lone tap
    (1, 3, 8, 12, 26, (3, 4), (1, 3), (1, 2, 1, 2), (1, 1), 1),  # even KW; stride 3
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d_bf16_paths_bound(case, path):
    n, c, m, h, w_, (kh, kw), stride, pads, dilation, groups = case
    rng = np.random.default_rng(sum(case[:5]))
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((m, c // groups, kh, kw)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    args = (stride, pads, dilation, groups)
    kw_args = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)
    conv = ops.Conv2d(w, b, precision="bf16", **kw_args)
    y = conv(x)
    ref = conv2d_ref(x, w, b, *args)
    bound = conv_bound(x, w, b, *args)
    err = np.abs(y - ref)
    assert (err <= bound).all(), f"{(err > bound).sum()} outside; worst {(err / bound).max():.3g}"
    assert (err > conv2d_tolerance(x, w, b, *args)).any()
    # ReLU into a strided output, and a strided input (x's rows not contiguous: no direct mode,
    # the depthwise rows gathered first, the generic fill), same values
    relu = ops.Conv2d(w, b, activation="relu", precision="bf16", **kw_args)
    out = np.full((n, m, y.shape[2], 2 * y.shape[3]), np.nan, np.float32)[..., ::2]
    relu(x, out=out)
    np.testing.assert_array_equal(out, np.maximum(y, 0))
    xs = np.repeat(x, 2, axis=3)[..., ::2]
    np.testing.assert_array_equal(conv(xs), y)


@pytest.mark.parametrize("groups", [2, 1])
def test_conv2d_bf16_lone_tap_keeps_inf_local(path, groups):
    """An odd filter leaves a lone tap whose pair partner has weight 0 (depthwise: groups = 2;
    tap-pair mode: 3 channels): that partner must be zero in x too, or an inf next to a
    receptive field would turn its output into 0 * inf = NaN."""
    rng = np.random.default_rng(8)
    c = 2 if groups == 2 else 3
    x = rng.standard_normal((1, c, 9, 40)).astype(np.float32)
    x[0, 0, 4, 20] = np.inf
    x[0, 1, 3, 0] = -np.inf
    for k in (3, 5, 1):
        w = rng.standard_normal((2, c // groups, k, k)).astype(np.float32)
        p = k // 2
        for stride in (1, 2):
            y = ops.conv2d(x, w, stride=stride, padding=p, groups=groups, precision="bf16")
            with np.errstate(invalid="ignore"):
                ref = conv2d_ref(x, w, None, (stride,) * 2, (p,) * 4, (1, 1), groups)
            np.testing.assert_array_equal(np.isfinite(y), np.isfinite(ref))
            np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))


def test_conv2d_bound_rejects_bf16_accumulation():
    """A kernel that accumulates in bf16 (a real bug class: dropping the float32 accumulator)
    breaks the bound: emulated here in float64 on the rounded inputs, positive data so that the
    bound's sum |x||w| is attained by the exact result."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0.5, 1.0, (1, 64, 6, 6)).astype(np.float32)
    w = rng.uniform(0.5, 1.0, (4, 64, 3, 3)).astype(np.float32)
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    xr, wr = rne_bf16(x), rne_bf16(w)
    acc = np.zeros((1, 4, 6, 6), np.float32)
    for c in range(64):  # sum over (c, kh, kw), the running sum rounded to bf16 each step
        for i in range(3):
            for j in range(3):
                wk = np.zeros_like(wr)
                wk[:, c, i, j] = wr[:, c, i, j]
                acc = rne_bf16(acc + conv2d_ref(xr, wk, None, *args).astype(np.float32))
    ref = conv2d_ref(x, w, None, *args)
    assert (np.abs(acc - ref) > conv_bound(x, w, None, *args)).any()
    # while the real kernel on the same data stays inside
    y = ops.conv2d(x, w, padding=1, precision="bf16")
    assert (np.abs(y - ref) <= conv_bound(x, w, None, *args)).all()


# ---- attention ----------------------------------------------------------------------------------


def attention_ref(q, k, v, *, causal=False, offset=0, mask=None, scale=None, softcap=0.0, u=U):
    """float64 attention and its per-element bound (bf16 inputs; u = 0: float32's own bound);
    mask bool (keep) or float (added)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    d = q.shape[-1]
    sc = 1 / np.sqrt(d) if scale is None else scale
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = sc * q @ k.swapaxes(-1, -2)
    mag = abs(sc) * np.abs(q) @ np.abs(k).swapaxes(-1, -2)
    if softcap:
        s = softcap * np.tanh(s / softcap)  # 1-Lipschitz: the score bound carries over
    keep = np.ones(s.shape, bool)
    madd = np.zeros(s.shape)
    if mask is not None:
        if mask.dtype == np.bool_:
            keep &= mask
        else:
            madd = madd + mask
            keep &= np.isfinite(mask + madd)
    if causal:
        lq, lk = s.shape[-2:]
        keep &= np.arange(lk)[None, :] <= np.arange(lq)[:, None] + offset
    s = np.where(keep, s + np.where(keep, madd, 0), -np.inf)
    smax = np.max(np.where(keep, np.abs(s), 0), -1, keepdims=True)
    delta_ij = (2 * u + u * u + gamma(d)) * mag + 8 * U32 * (
        np.abs(np.where(keep, s, 0)) + np.abs(np.where(keep, madd, 0)) + smax
    )
    delta = np.max(np.where(keep, delta_ij, 0), -1, keepdims=True)
    m = np.max(s, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    lsum = e.sum(-1, keepdims=True)
    p = np.divide(e, lsum, out=np.zeros_like(e), where=lsum > 0)
    out = p @ v
    lk = k.shape[2]
    eta = 2 * u + u * u + 2 * gamma(lk + lk / 96 + 2) + 2.0**-20
    bound = (np.exp(2 * delta) * (1 + eta) - 1) * (p @ np.abs(v))
    lse = np.where(lsum[..., 0] > 0, m[..., 0] + np.log(np.maximum(lsum[..., 0], 1e-300)), -np.inf)
    lse_bound = delta[..., 0] + 2 * gamma(lk + lk / 96 + 2) + 2.0**-20 + 4 * U32 * np.abs(lse)
    return out, bound, lse, lse_bound


def _qkv(rng, b, hq, hkv, lq, lk, d, dv):
    q = rng.standard_normal((b, hq, lq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, lk, dv)).astype(np.float32)
    return q, k, v


# (B, Hq, Hkv, Lq, Lk, D, Dv, causal)
ATTN_CASES = [
    (1, 2, 2, 130, 200, 64, 64, False),
    (1, 2, 2, 200, 200, 64, 64, True),
    (1, 2, 1, 70, 150, 128, 128, False),  # GQA
    (2, 2, 2, 97, 97, 128, 128, True),
    (1, 3, 1, 33, 61, 5, 7, False),  # odd head dims, odd key count (pairs with zeros)
    (1, 1, 1, 3, 101, 33, 20, True),  # a few queries (decode-like), bottom-right below
    (2, 4, 2, 1, 257, 64, 64, False),  # one query
]


@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_attention_bf16_bound(case, path):
    b, hq, hkv, lq, lk, d, dv, causal = case
    rng = np.random.default_rng(sum(case[:7]))
    q, k, v = _qkv(rng, b, hq, hkv, lq, lk, d, dv)
    align = "bottom_right" if lq < 8 else "top_left"
    offset = lk - lq if align == "bottom_right" else 0
    o, lse = ops.attention(
        q, k, v, is_causal=causal, causal_align=align, return_lse=True, precision="bf16"
    )
    assert o.dtype == np.float32 and o.shape == (b, hq, lq, dv)
    ref, bound, lse_ref, lse_bound = attention_ref(q, k, v, causal=causal, offset=offset)
    err = np.abs(o - ref)
    assert (err <= bound).all(), f"{(err > bound).sum()} outside; worst {(err / bound).max():.3g}"
    assert (np.abs(lse - lse_ref) <= lse_bound).all()
    # Not float32 in disguise: past float32's own bound (the same derivation, inputs unrounded).
    _, fp32_bound, _, _ = attention_ref(q, k, v, causal=causal, offset=offset, u=0.0)
    assert (err > fp32_bound).any()


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_attention_bf16_masks_softcap_scale(path, kind):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 2, 2, 80, 120, 64, 64)
    if kind == "bool":
        mask = rng.random((1, 2, 80, 120)) > 0.3
        mask[0, 0, 5] = False  # a row with every key masked: zeros
    else:
        mask = rng.standard_normal((1, 1, 80, 120)).astype(np.float32)  # broadcast over heads
        mask[..., ::7] = -np.inf
    o = ops.attention(q, k, v, attn_mask=mask, scale=0.2, softcap=3.0, precision="bf16")
    ref, bound, _, _ = attention_ref(q, k, v, mask=mask, scale=0.2, softcap=3.0)
    assert np.isfinite(o).all()
    assert (np.abs(o - ref) <= bound).all()
    if kind == "bool":
        np.testing.assert_array_equal(o[0, 0, 5], 0)


def test_attention_bf16_rounds_to_nearest_even(path):
    """One key: out = v exactly (softmax of one score is 1), so out must be bf16(v)."""
    t = 2.0**-8
    v = np.array([1 + t, 1 + 3 * t, 1 + t + 2**-12, -(1 + 3 * t), 2.5], np.float32)
    v = v.reshape(1, 1, 1, -1)
    q = np.ones((1, 1, 20, 4), np.float32)  # 20 queries: a vector-wide block, not the row path
    k = np.ones((1, 1, 1, 4), np.float32)
    o = ops.attention(q, k, v, precision="bf16")
    np.testing.assert_array_equal(o[0, 0], np.broadcast_to(rne_bf16(v).reshape(1, -1), (20, 5)))


def test_attention_bound_rejects_bf16_accumulation():
    """P.V accumulated in bf16 instead of float32 breaks the bound (emulated; positive values,
    many keys: small terms vanish against the running sum's ulp)."""
    rng = np.random.default_rng(4)
    q, k, _ = _qkv(rng, 1, 1, 1, 16, 512, 64, 8)
    v = rng.uniform(0.5, 1.0, (1, 1, 512, 8)).astype(np.float32)
    ref, bound, _, _ = attention_ref(q, k, v)
    qr, kr, vr = rne_bf16(q), rne_bf16(k), rne_bf16(v)
    s = (qr.astype(np.float64) @ kr.swapaxes(-1, -2).astype(np.float64)) / 8.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    acc = np.zeros((1, 1, 16, 8), np.float32)
    for j in range(512):
        acc = rne_bf16(acc + (rne_bf16(p[..., j : j + 1].astype(np.float32)) * vr[:, :, j : j + 1]))
    assert (np.abs(acc - ref) > bound).any()
    o = ops.attention(q, k, v, precision="bf16")
    assert (np.abs(o - ref) <= bound).all()


# ---- inputs, arguments, dispatch ----------------------------------------------------------------


def test_round_bf16_matches_rne():
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000)).astype(np.float32)
    t = np.float32(2.0**-8)
    a[:4] = [1 + t, 1 + 3 * t, -(1 + t), 3.4e38]  # ties; past the tie with 2^128: inf
    r = _C.round_bf16(a)
    np.testing.assert_array_equal(r[4:], rne_bf16(a[4:]))
    np.testing.assert_array_equal(r[:3], [1.0, 1 + 4 * t, -1.0])
    assert np.isposinf(r[3])
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    rs = _C.round_bf16(special)
    assert np.isnan(rs[0]) and rs[1] == np.inf and rs[2] == -np.inf
    assert rs[3] == 0 and np.signbit(rs[4])


def test_bfloat16_inputs_ml_dtypes_and_torch():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    xb = x.astype(ml_dtypes.bfloat16)
    y = ops.conv2d(xb, w, padding=1, precision="bf16")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, ops.conv2d(rne_bf16(x), w, padding=1, precision="bf16"))
    q, k, v = _qkv(rng, 1, 2, 2, 40, 50, 32, 32)
    qb, kb, vb = (a.astype(ml_dtypes.bfloat16) for a in (q, k, v))
    o = ops.attention(qb, kb, vb, precision="bf16")
    np.testing.assert_array_equal(
        o, ops.attention(rne_bf16(q), rne_bf16(k), rne_bf16(v), precision="bf16")
    )
    with pytest.raises(TypeError, match="x: expected float32"):
        ops.conv2d(xb, w)  # fp32 precision takes float32 only, as before
    torch = pytest.importorskip("torch")
    yt = ops.conv2d(torch.from_numpy(x).bfloat16(), w, padding=1, precision="bf16")
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_array_equal(yt.numpy(), y)


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None, 16])
def test_bad_precision_is_a_value_error(bad):
    x = np.zeros((1, 2, 4, 4), np.float32)
    w = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="precision"):
        ops.conv2d(x, w, precision=bad)
    with pytest.raises(ValueError, match="precision"):
        ops.Conv2d(w, precision=bad)
    q = np.zeros((1, 1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="precision"):
        ops.attention(q, q, q, precision=bad)


def test_fp32_default_is_untouched():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(ops.conv2d(x, w), ops.conv2d(x, w, precision="fp32"))


def test_native_follows_the_variant():
    """The AVX512-BF16 kernels run only under the avx512 variant on a CPU that has them."""
    previous = _C.active_variant()
    try:
        for name in _C.runnable_variants():
            _C.set_variant(name)
            assert _C.bf16_native() == (name == "avx512" and _C.cpu_features()["avx512_bf16"])
    finally:
        _C.set_variant(previous)
