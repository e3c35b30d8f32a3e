"""mmfast.ops.attention against a float64 reference on every kernel variant, against PyTorch's
scaled_dot_product_attention, and against the ONNX Attention operator's own test cases.

Tolerance (derived, not tuned): for query i the kernel's float32 score s_ij carries an error
    δ_ij <= eps·((D + 3)·|scale|·Σ_x|q_ix·k_jx| + 2|s_ij| + 2|m_i| + |softcap|·8 + 8)
(a length-D dot product, the scale and the log2(e) the kernel folds into it, mask addition,
softcap's ~4-ulp tanh, the rounding of s - m before exp, exp2's ~1 ulp, lse's ln 2). Each
softmax weight then moves by at most 2·max_j δ_ij relatively, and the output row accumulates Lk
products sequentially (one FMA chain per lane) plus the final division:
    err_ic <= (2·max_j δ_ij + (Lk + 8)·eps) · Σ_j w_ij·|v_jc|.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

import mmfast
from mmfast import _C, ops

EPS = float(np.finfo(np.float32).eps)
RNG = np.random.default_rng(20261126)


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    align: str = "top_left",
    scale: float | None = None,
    softcap: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 attention: out, lse, and the error bounds of a float32 kernel for both."""
    _, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    q64 = q.astype(np.float64)
    k64 = np.repeat(k.astype(np.float64), g, axis=1)  # (B, Hq, Lk, D)
    v64 = np.repeat(v.astype(np.float64), g, axis=1)  # (B, Hq, Lk, Dv)
    sc = 1.0 / math.sqrt(D) if scale is None else scale
    s = sc * (q64 @ k64.transpose(0, 1, 3, 2))  # (B, Hq, Lq, Lk)
    sabs = abs(sc) * (np.abs(q64) @ np.abs(k64).transpose(0, 1, 3, 2))
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    keep = np.ones(s.shape, bool)
    if mask is not None:
        if mask.dtype == np.bool_:
            keep &= np.broadcast_to(mask, s.shape)
        else:
            s = s + np.broadcast_to(mask, s.shape).astype(np.float64)
    if causal:
        off = 0 if align == "top_left" else Lk - Lq
        keep &= np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + off
    keep &= s > -np.inf
    s = np.where(keep, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(keep, np.exp(s - m), 0.0)
    l_ = p.sum(axis=-1, keepdims=True)
    w = p / np.where(l_ > 0, l_, 1.0)
    out = w @ v64
    lse = np.where(l_[..., 0] > 0, m[..., 0] + np.log(np.where(l_ > 0, l_, 1.0))[..., 0], -np.inf)
    delta = EPS * ((D + 3) * sabs + 2 * np.abs(np.where(keep, s, 0)) + 2 * np.abs(m))
    delta = np.where(keep, delta + EPS * (8 + 8 * softcap), 0).max(axis=-1, keepdims=True)
    rel = 2 * delta + (Lk + 8) * EPS  # relative error of every weight and of Σ exp
    bound = rel * (w @ np.abs(v64))
    # lse = m + log(l): m's own error (<= delta), log of l's relative error, final rounding
    lse_bound = (delta + rel)[..., 0] + EPS * (np.abs(lse) + np.abs(m[..., 0]) + 1)
    return out, lse, bound, np.where(np.isfinite(lse), lse_bound, 0)


def check(got: np.ndarray, ref: np.ndarray, bound: np.ndarray, what: str = "out") -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > bound + 1e-30
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {err.size} elements outside the bound; worst at {i}: "
            f"got {got[i]}, ref {ref[i]}, err {err[i]:.3g}, bound {bound[i]:.3g}"
        )


def run_and_check(q, k, v, **kw: Any) -> np.ndarray:
    out, lse = ops.attention(q, k, v, return_lse=True, **kw)
    rkw = {
        "mask": kw.get("attn_mask"),
        "causal": kw.get("is_causal", False),
        "align": kw.get("causal_align", "top_left"),
        "scale": kw.get("scale"),
        "softcap": kw.get("softcap", 0.0),
    }
    ref, ref_lse, bound, lse_bound = reference(q, k, v, **rkw)
    check(out, ref, bound)
    # All-masked rows: exactly 0 and lse = -inf.
    dead = ref_lse == -np.inf
    assert (out[dead] == 0).all() and (lse[dead] == -np.inf).all()
    check(lse[~dead], ref_lse[~dead], lse_bound[~dead], "lse")
    return out


# ---- shapes: sequence lengths, head dims, GQA / MQA --------------------------------------------

LENGTHS = [1, 7, 64, 267, 1030]


@pytest.mark.parametrize("L", LENGTHS)
def test_lengths_square(variant: str, L: int):
    q, k, v = randn(2, 3, L, 64), randn(2, 3, L, 64), randn(2, 3, L, 64)
    run_and_check(q, k, v)


@pytest.mark.parametrize(
    "Lq,Lk", [(1, 1030), (1030, 1), (7, 267), (267, 7), (64, 1030), (1030, 64), (65, 97)]
)
def test_lengths_differ(variant: str, Lq: int, Lk: int):
    q, k, v = randn(1, 2, Lq, 40), randn(1, 2, Lk, 40), randn(1, 2, Lk, 24)
    run_and_check(q, k, v)


@pytest.mark.parametrize("D", [8, 16, 40, 64, 80, 128, 256])
@pytest.mark.parametrize("dv_delta", [0, 1, -3])
def test_head_dims(variant: str, D: int, dv_delta: int):
    Dv = D + dv_delta if D + dv_delta <= 256 else D - 7
    q, k, v = randn(1, 2, 70, D), randn(1, 2, 101, D), randn(1, 2, 101, Dv)
    run_and_check(q, k, v, is_causal=True)


@pytest.mark.parametrize("Hq,Hkv", [(8, 2), (6, 3), (5, 1), (4, 1)])
def test_gqa_mqa(variant: str, Hq: int, Hkv: int):
    q, k, v = randn(2, Hq, 33, 16), randn(2, Hkv, 45, 16), randn(2, Hkv, 45, 16)
    out = run_and_check(q, k, v)
    # head h reads kv head h // (Hq // Hkv): the same result as repeating the kv heads
    g = Hq // Hkv
    rep = ops.attention(q, np.repeat(k, g, 1), np.repeat(v, g, 1))
    np.testing.assert_array_equal(out, rep)


# ---- masks ------------------------------------------------------------------------------------

B_, H_, LQ_, LK_ = 2, 3, 73, 70  # 73 = 64 + a 9-query tail (the narrow tile path)
MASK_SHAPES = [
    tuple(full if keep else 1 for keep, full in zip(keeps, (B_, H_, LQ_, LK_), strict=True))
    for keeps in itertools.product([False, True], repeat=4)
] + [(LQ_, LK_), (LK_,), (H_, 1, LK_), (1, LK_), ()]


def dead_rows(shape: tuple[int, ...], first: int) -> list[int]:
    """Rows to mask completely: one in the first query block and one in the tail."""
    rows = shape[-2]
    return [first, rows - 2] if rows > 6 else ([rows - 1] if rows > 1 else [])


def make_mask(shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "bool":
        m = RNG.random(shape) < 0.7
        if m.ndim >= 2:
            m[..., dead_rows(shape, 3), :] = False
        return np.asarray(m)
    m = np.asarray(randn(*shape, scale=2.0))
    m[RNG.random(shape) < 0.3] = -np.inf
    if m.ndim >= 2:
        m[..., dead_rows(shape, 5), :] = -np.inf
    return np.asarray(m, dtype=np.float32)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_mask_broadcast(variant: str, shape: tuple[int, ...], kind: str):
    q, k, v = randn(B_, H_, LQ_, 24), randn(B_, H_, LK_, 24), randn(B_, H_, LK_, 24)
    mask = make_mask(shape, kind)
    run_and_check(q, k, v, attn_mask=mask)


def test_mask_with_causal_and_softcap(variant: str):
    q, k, v = randn(2, 4, 150, 32), randn(2, 2, 200, 32), randn(2, 2, 200, 48)
    for kind in ("bool", "float"):
        mask = make_mask((2, 1, 150, 200), kind)
        run_and_check(q, k, v, attn_mask=mask, is_causal=True, causal_align="bottom_right")
        run_and_check(q, k, v, attn_mask=mask, is_causal=True, softcap=5.0)


def test_fully_masked_rows_are_zero(variant: str):
    q, k, v = randn(1, 2, 9, 8), randn(1, 2, 11, 8), randn(1, 2, 11, 8)
    mask = np.ones((9, 11), bool)
    mask[[0, 4, 8]] = False
    out, lse = ops.attention(q, k, v, attn_mask=mask, return_lse=True)
    assert (out[:, :, [0, 4, 8]] == 0).all() and (lse[:, :, [0, 4, 8]] == -np.inf).all()
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    out2 = ops.attention(q, k, v, attn_mask=fmask)
    np.testing.assert_array_equal(out, out2)
    assert not np.isnan(out).any()


@pytest.mark.parametrize("Lq", [1, 2, 3, 4, 5, 66, 67])
@pytest.mark.parametrize("kind", [None, "bool", "float"])
def test_few_queries_row_path(variant: str, Lq: int, kind: str | None):
    # Blocks of <= 4 queries (decode steps, short tails) take a row-by-row path
    q, k, v = randn(2, 4, Lq, 40), randn(2, 2, 200, 40), randn(2, 2, 200, 24)
    mask = None if kind is None else make_mask((2, 1, Lq, 200), kind)
    run_and_check(q, k, v, attn_mask=mask)
    run_and_check(q, k, v, attn_mask=mask, is_causal=True, causal_align="bottom_right")
    run_and_check(q, k, v, attn_mask=mask, softcap=3.0, scale=-0.4)
    run_and_check(q, k[:, :, :3], v[:, :, :3], is_causal=True, causal_align="bottom_right")


# ---- causal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (64, 64), (267, 267), (100, 300), (300, 100), (1, 77)])
def test_causal(variant: str, align: str, Lq: int, Lk: int):
    q, k, v = randn(1, 2, Lq, 64), randn(1, 2, Lk, 64), randn(1, 2, Lk, 64)
    out = run_and_check(q, k, v, is_causal=True, causal_align=align)
    if align == "bottom_right" and Lq > Lk:
        assert (out[:, :, : Lq - Lk] == 0).all()  # queries before the first key see nothing
    if align == "top_left":
        # the first query sees only the first key: its output is that value row
        np.testing.assert_allclose(out[:, :, 0], v[:, :, 0], rtol=4 * EPS, atol=0)


def test_causal_decode_step_matches_prefill(variant: str):
    # bottom-right: the last query of a prefill equals a one-token decode step over the cache
    q, k, v = randn(1, 4, 50, 32), randn(1, 4, 50, 32), randn(1, 4, 50, 32)
    full = ops.attention(q, k, v, is_causal=True)
    step = ops.attention(q[:, :, -1:], k, v, is_causal=True, causal_align="bottom_right")
    np.testing.assert_allclose(step[:, :, 0], full[:, :, -1], rtol=1e-5, atol=1e-6)


# ---- scale, softcap, magnitude ----------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 1.0, -0.3, 0.0, 1e-3])
@pytest.mark.parametrize("softcap", [0.0, 1.0, 30.0])
def test_scale_and_softcap(variant: str, scale: float | None, softcap: float):
    q, k, v = randn(1, 2, 66, 32, scale=2.0), randn(1, 2, 99, 32), randn(1, 2, 99, 20)
    run_and_check(q, k, v, scale=scale, softcap=softcap)


def test_large_scores_stay_finite(variant: str):
    # scores ~1e4: exp would overflow without the running max
    q, k, v = (
        randn(1, 2, 130, 64, scale=100.0),
        randn(1, 2, 140, 64, scale=100.0),
        randn(1, 2, 140, 64),
    )
    out = run_and_check(q, k, v, scale=1.0 / 8)
    assert np.isfinite(out).all()
    run_and_check(q, k, v, scale=-1.0 / 8, is_causal=True)


# ---- layouts, out=, torch tensors, empty ------------------------------------------------------


def test_strided_inputs_and_out(variant: str):
    # (B, L, H, D) storage viewed as (B, H, L, D), as a fused QKV projection gives
    qkv = randn(2, 50, 3, 4, 32)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    out = np.empty((2, 50, 4, 32), np.float32).transpose(0, 2, 1, 3)
    res = ops.attention(q, k, v, out=out, is_causal=True)
    assert res is out
    expected = ops.attention(*(np.ascontiguousarray(x) for x in (q, k, v)), is_causal=True)
    np.testing.assert_array_equal(out, expected)
    # a non-contiguous last dimension is copied, not misread
    q2 = randn(1, 2, 10, 64)[..., ::2]
    run_and_check(q2, randn(1, 2, 12, 32), randn(1, 2, 12, 8))


def test_empty_lengths():
    q, k, v = randn(1, 2, 0, 16), randn(1, 2, 5, 16), randn(1, 2, 5, 8)
    out, lse = ops.attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)
    q, k, v = randn(1, 2, 3, 16), randn(1, 2, 0, 16), randn(1, 2, 0, 8)
    out, lse = ops.attention(q, k, v, return_lse=True)  # no key: every row fully masked
    assert out.shape == (1, 2, 3, 8) and (out == 0).all() and (lse == -np.inf).all()
    assert ops.attention(randn(0, 2, 3, 4), randn(0, 1, 3, 4), randn(0, 1, 3, 4)).shape == (
        0,
        2,
        3,
        4,
    )


def test_thread_count_does_not_change_results():
    q, k, v = randn(1, 3, 200, 64), randn(1, 3, 300, 64), randn(1, 3, 300, 64)
    n0 = mmfast.get_num_threads()
    try:
        mmfast.set_num_threads(1)
        one = ops.attention(q, k, v, is_causal=True)
        mmfast.set_num_threads(3)
        three = ops.attention(q, k, v, is_causal=True)
    finally:
        mmfast.set_num_threads(n0)
    np.testing.assert_array_equal(one, three)


# ---- bad input --------------------------------------------------------------------------------

Q4, K4, V4 = randn(1, 4, 5, 8), randn(1, 2, 6, 8), randn(1, 2, 6, 8)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((Q4[0], K4, V4), {}, ValueError, "q: expected 4 dimensions"),
        ((Q4, K4[0], V4), {}, ValueError, "k: expected 4 dimensions"),
        ((Q4, K4, V4[0]), {}, ValueError, "v: expected 4 dimensions"),
        ((Q4.astype(np.float64), K4, V4), {}, TypeError, "q: expected float32"),
        ((Q4, K4.astype(np.float16), V4), {}, TypeError, "k: expected float32"),
        ((Q4, K4, V4.astype(np.int32)), {}, TypeError, "v: expected float32"),
        (([[1.0]], K4, V4), {}, TypeError, "q: expected a numpy array"),
        ((Q4, randn(1, 3, 6, 8), randn(1, 3, 6, 8)), {}, ValueError, "k: 3 kv heads do not"),
        ((Q4, K4, randn(1, 1, 6, 8)), {}, ValueError, "v: 1 heads differ"),
        ((Q4, randn(1, 2, 6, 7), V4), {}, ValueError, "k: head dim 7 differs"),
        ((Q4, K4, randn(1, 2, 5, 8)), {}, ValueError, "v: sequence length 5 differs"),
        ((Q4, randn(2, 2, 6, 8), V4), {}, ValueError, "k: batch size"),
        ((randn(1, 1, 2, 257), randn(1, 1, 2, 257), V4[:, :1, :2]), {}, ValueError, "q: head"),
        ((Q4, K4, randn(1, 2, 6, 300)), {}, ValueError, "v: head dim 300"),
        ((Q4, K4, V4), {"attn_mask": np.ones((5, 7), bool)}, ValueError, "attn_mask: shape"),
        ((Q4, K4, V4), {"attn_mask": np.ones((2, 4, 5, 6), bool)}, ValueError, "attn_mask"),
        ((Q4, K4, V4), {"attn_mask": np.ones((5, 6), np.int64)}, TypeError, "attn_mask: exp"),
        ((Q4, K4, V4), {"attn_mask": np.ones((5, 6))}, TypeError, "attn_mask: expected"),
        ((Q4, K4, V4), {"scale": float("nan")}, ValueError, "scale: must be finite"),
        ((Q4, K4, V4), {"scale": float("inf")}, ValueError, "scale: must be finite"),
        ((Q4, K4, V4), {"scale": 1e300}, ValueError, "scale: must be finite"),
        ((Q4, K4, V4), {"scale": "1"}, TypeError, "scale: expected a real"),
        ((Q4, K4, V4), {"softcap": -1.0}, ValueError, "softcap: must be finite and >= 0"),
        ((Q4, K4, V4), {"softcap": float("inf")}, ValueError, "softcap"),
        ((Q4, K4, V4), {"causal_align": "bottom-right"}, ValueError, "causal_align: expected"),
        ((Q4, K4, V4), {"is_causal": 1}, TypeError, "is_causal: expected a bool"),
        ((Q4, K4, V4), {"out": np.empty((1, 4, 5, 9), np.float32)}, ValueError, "out: expected"),
        ((Q4, K4, V4), {"out": np.empty((1, 4, 5, 8))}, TypeError, "out: expected float32"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, exc: type, match: str):
    with pytest.raises(exc, match=match):
        ops.attention(*args, **kwargs)


def test_out_read_only_or_overlapping():
    ro = np.empty((1, 4, 5, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        ops.attention(Q4, K4, V4, out=ro)
    q = Q4.copy()
    with pytest.raises(ValueError, match="out: overlaps q"):
        ops.attention(q, K4, V4, out=q)


def test_native_layer_checks_too():
    # The C++ layer checks again (two-layer checking): bad calls raise, never crash.
    out = np.empty((1, 4, 5, 8), np.float32)
    call = lambda **kw: _C.attention(  # noqa: E731
        **{
            "q": Q4, "k": K4, "v": V4, "out": out, "mask": None, "lse": None, "causal": False,
            "causal_offset": 0, "scale": 1.0, "softcap": 0.0, **kw,
        }
    )  # fmt: skip
    call()
    cases = [
        ({"q": Q4.astype(np.float64)}, "q: expected float32"),
        ({"k": K4[0]}, "k: expected 4 dimensions"),
        ({"k": randn(1, 3, 6, 8), "v": randn(1, 3, 6, 8)}, "k: its head count must divide"),
        ({"v": randn(1, 2, 7, 8)}, "v: sequence length differs"),
        ({"out": np.empty((1, 4, 5, 7), np.float32)}, "out: shape"),
        ({"mask": np.ones((5, 6), bool)}, "mask: shape"),
        ({"mask": np.ones((1, 4, 5, 6), np.int32)}, "mask: expected float32 or bool"),
        ({"lse": np.empty((1, 4, 4), np.float32)}, "lse: shape"),
        ({"scale": float("nan")}, "scale: must be finite"),
        ({"softcap": -2.0}, "softcap: must be finite"),
        ({"q": randn(1, 4, 5, 16)[..., ::2]}, "q: the last dimension must be contiguous"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            call(**kw)


# ---- PyTorch SDPA ----------------------------------------------------------------------------


@pytest.mark.export
@pytest.mark.parametrize(
    "Hq,Hkv,Lq,Lk,D,causal,mask",
    [
        (8, 8, 128, 128, 64, False, None),
        (8, 2, 97, 1025, 59, False, None),
        (4, 1, 300, 300, 128, True, None),
        (6, 3, 111, 70, 80, False, "bool"),
        (4, 4, 64, 200, 32, False, "float"),
    ],
)
def test_matches_torch_sdpa(variant: str, Hq, Hkv, Lq, Lk, D, causal, mask):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    # a fixed draw: the "twice torch's error" rule compares two roundings of the same data, and
    # on a rare draw torch's float32 error is itself unusually small (the test was flaky)
    torch.manual_seed(Hq * 1000 + Lq + Lk + D)
    q, k, v = torch.randn(2, Hq, Lq, D), torch.randn(2, Hkv, Lk, D), torch.randn(2, Hkv, Lk, D)
    m = None
    if mask == "bool":
        m = torch.rand(2, 1, Lq, Lk) < 0.8
    elif mask == "float":
        m = torch.randn(Lq, Lk)
    ours = ops.attention(q, k, v, attn_mask=m, is_causal=causal)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    gqa = Hq != Hkv
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, enable_gqa=gqa)
    ref = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(),
        attn_mask=None if m is None else (m if m.dtype == torch.bool else m.double()),
        is_causal=causal, enable_gqa=gqa,
    )  # fmt: skip
    # flash-attention's rule: our error vs float64 within twice torch's float32 error + slack
    ours_err = (ours.double() - ref).abs().max().item()
    torch_err = (theirs.double() - ref).abs().max().item()
    assert ours_err <= 2 * torch_err + 4 * EPS * ref.abs().max().item(), (ours_err, torch_err)


# ---- ONNX Attention test cases ---------------------------------------------------------------

SUPPORTED_ATTRS = {"is_causal", "kv_num_heads", "q_num_heads", "scale", "softcap"}
SUPPORTED_ATTRS |= {"qk_matmul_output_mode", "softmax_precision"}  # only affect other outputs


def onnx_cases() -> list[Any]:
    try:
        from onnx.backend.test.case.node import collect_testcases
    except ImportError:
        return []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    picked = []
    for c in cases:
        node = c.model.graph.node[0]
        if node.op_type != "Attention":
            continue
        inputs = list(node.input)
        while inputs and inputs[-1] == "":
            inputs.pop()
        ins = c.data_sets[0][0]
        attrs = {a.name for a in node.attribute}
        if len(inputs) > 4 or "" in inputs or not attrs <= SUPPORTED_ATTRS:
            continue  # past KV, nonpad_kv_seqlen, sliding windows: not this op's semantics
        if any(x.dtype != np.float32 for x in ins[:3]):
            continue
        picked.append(c)
    return picked


ONNX_CASES = onnx_cases()


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c.name for c in ONNX_CASES])
def test_onnx_attention_cases(case: Any):
    import onnx

    node = case.model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ins, outs = case.data_sets[0]
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    three_d = q.ndim == 3
    if three_d:  # (B, L, H·D) -> (B, H, L, D)
        hq, hkv = attrs["q_num_heads"], attrs["kv_num_heads"]

        def split(x: np.ndarray, h: int) -> np.ndarray:
            return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(0, 2, 1, 3)

        q, k, v = split(q, hq), split(k, hkv), split(v, hkv)
    kw: dict[str, Any] = {
        "attn_mask": mask,
        "is_causal": bool(attrs.get("is_causal", 0)),
        "scale": attrs.get("scale"),
        "softcap": float(attrs.get("softcap", 0.0)),
    }
    out = ops.attention(q, k, v, **kw)
    _, _, bound, _ = reference(
        q, k, v, mask, kw["is_causal"], "top_left", kw["scale"], kw["softcap"]
    )
    expected = outs[0]
    if three_d:
        out = out.transpose(0, 2, 1, 3).reshape(expected.shape)
        bound = bound.transpose(0, 2, 1, 3).reshape(expected.shape)
    # the ONNX reference is float32 too: both sides within the derived bound of float64
    check(out, expected.astype(np.float64), 2 * bound + 1e-30 + EPS * np.abs(expected))


def test_onnx_cases_were_found():
    pytest.importorskip("onnx")
    assert len(ONNX_CASES) >= 30


def test_native_layer_refuses_non_arrays_for_mask_and_lse():
    # A nested list used to become a temporary array freed before the kernel read (mask) or
    # wrote (lse) it.
    out = np.empty((1, 4, 5, 8), np.float32)
    base = dict(causal=False, causal_offset=0, scale=1.0, softcap=0.0)
    with pytest.raises(TypeError, match="lse: expected a numpy array or None, got list"):
        _C.attention(Q4, K4, V4, out, None, [[[0.0] * 5] * 4], **base)
    with pytest.raises(TypeError, match="attn_mask: expected a numpy array or None, got list"):
        _C.attention(Q4, K4, V4, out, [[[[True] * 6] * 5] * 4], None, **base)
    with pytest.raises(ValueError, match="causal_offset: out of range"):
        _C.attention(Q4, K4, V4, out, None, None, **{**base, "causal_offset": 2**63 - 1})
