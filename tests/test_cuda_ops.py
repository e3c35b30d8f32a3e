"""CUDA attention and conv2d against float64 references (and torch's own CUDA kernels).

Marked `cuda`: skipped where torch sees no GPU or mmfast was built without CUDA kernels. The
GPU-less checks (a clear error instead of a crash) run everywhere, at the end of this file.

Tolerances come from the arithmetic, not from trial runs:
- float32 kernels: exact float32 products with float32 accumulation over K terms, so each
  element is within ~K * eps32 * (sum of |terms|) of the float64 value.
- float16/bfloat16 kernels: float32 accumulation, and one rounding to the dtype of each
  operand the tensor cores take (the attention probabilities P) and of the output: a
  norm-wise relative error within a few units of the dtype's eps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import mmfast
from mmfast.ops import attention, conv2d

torch = pytest.importorskip("torch")
F = torch.nn.functional

HAVE_GPU = bool(torch.cuda.is_available()) and mmfast.cuda_status()["available"]
cuda = pytest.mark.skipif(not HAVE_GPU, reason="needs an NVIDIA GPU and a CUDA build")

EPS = {
    torch.float32: 2.0**-23,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(dtype).cuda()


def _rel_err(out, ref):
    """‖out − ref‖ / ‖ref‖ in float64 (NaN anywhere fails)."""
    o = out.detach().double().cpu()
    assert torch.isfinite(o).all(), "non-finite values in the output"
    return float((o - ref).norm() / ref.norm().clamp_min(1e-300))


# ---- attention ----------------------------------------------------------------------------------
def _attention_ref(q, k, v, *, mask=None, causal=False, offset=0, scale=None, softcap=0.0):
    """float64 CPU reference with the ops.attention semantics; rows with no visible key -> 0."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    _, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D) if scale is None else scale)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        m = mask.cpu()
        s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.double()
    if causal:
        i = torch.arange(Lq).view(-1, 1)
        j = torch.arange(Lk).view(1, -1)
        s = s.masked_fill(j > i + offset, -math.inf)
    mx = s.amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    p = torch.exp(s - mx)
    denom = p.sum(-1, keepdim=True)
    out = torch.where(denom > 0, (p @ v) / denom.clamp_min(1e-300), torch.zeros(()).double())
    lse = torch.where(denom[..., 0] > 0, mx[..., 0] + torch.log(denom[..., 0]), -math.inf)
    return out, lse


def _attn_tol(dtype, D, Lk):
    # float32: dot products of D terms and sums of Lk terms; 16-bit: P and out rounded once.
    return EPS[dtype] * (D + Lk) if dtype == torch.float32 else 2 * EPS[dtype]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 64, 80, 96, 128, 256, 20])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_float64(dtype, D, causal):
    gen = torch.Generator().manual_seed(D * 7 + causal)
    B, Hq, Hkv, Lq, Lk = 2, 4, 2, 77, 131  # GQA, lengths off every tile size
    q, k, v = (_rand((B, h, L, D), dtype, gen) for h, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    out, lse = attention(q, k, v, is_causal=causal, return_lse=True)
    assert out.dtype == dtype and out.device == q.device and out.shape == (B, Hq, Lq, D)
    ref, ref_lse = _attention_ref(q, k, v, causal=causal)
    err = _rel_err(out, ref)
    assert err <= _attn_tol(dtype, D, Lk), err
    assert torch.allclose(lse.double().cpu(), ref_lse, atol=1e-4, rtol=1e-4)
    if dtype != torch.float32:  # and no worse than torch's own kernel at this precision
        sdpa = F.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal
        )
        assert err <= 2 * _rel_err(sdpa, ref) + EPS[dtype], (err, _rel_err(sdpa, ref))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_masks_softcap_mqa_and_bottom_right(dtype):
    gen = torch.Generator().manual_seed(11)
    B, Hq, Hkv, Lq, Lk, D, Dv = 2, 3, 1, 150, 70, 64, 48  # MQA, Lq > Lk, Dv != D
    q = _rand((B, Hq, Lq, D), dtype, gen)
    k = _rand((B, Hkv, Lk, D), dtype, gen)
    v = _rand((B, Hkv, Lk, Dv), dtype, gen)
    bool_mask = torch.rand((1, Hq, Lq, Lk), generator=gen) > 0.3
    bool_mask[0, 1, 100] = False  # a row with every key masked (row 100 sees keys 0..20)
    float_mask = torch.randn((B, 1, 1, Lk), generator=gen)
    float_mask[1, 0, 0, :10] = -math.inf
    for mask in (bool_mask, float_mask):
        for softcap in (0.0, 5.0):
            out = attention(
                q,
                k,
                v,
                attn_mask=mask.cuda(),
                is_causal=True,
                causal_align="bottom_right",
                scale=0.3,
                softcap=softcap,
            )
            ref, _ = _attention_ref(
                q, k, v, mask=mask, causal=True, offset=Lk - Lq, scale=0.3, softcap=softcap
            )
            assert _rel_err(out, ref) <= _attn_tol(dtype, D, Lk)
            # the first Lq - Lk queries see no key: exact zeros, not NaN
            assert (out[:, :, : Lq - Lk].float() == 0).all()
    out = attention(q, k, v, attn_mask=bool_mask.cuda())
    assert (out[0, 1, 100].float() == 0).all()


@cuda
@pytest.mark.cuda
def test_attention_strided_inputs_out_and_stream():
    gen = torch.Generator().manual_seed(3)
    B, L, H, D = 2, 200, 4, 128
    # (B, L, H, D) storage viewed as (B, H, L, D): rows strided, the last dim contiguous
    q, k, v = (_rand((B, L, H, D), torch.bfloat16, gen).transpose(1, 2) for _ in range(3))
    out = torch.full((B, H, L, D), float("nan"), dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        res = attention(q, k, v, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    assert res is out
    ref, _ = _attention_ref(q, k, v)
    assert _rel_err(out, ref) <= _attn_tol(torch.bfloat16, D, L)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq", [3, 130])
def test_attention_nan_scores_give_nan_rows(dtype, lq):
    # As on the CPU (tests/test_reliability.py) and in PyTorch: a NaN score makes its row's
    # output and lse NaN; it is not reported as a fully masked row (zeros, lse = -inf).
    gen = torch.Generator().manual_seed(9)
    q, k, v = (_rand((1, 2, n, 64), dtype, gen) for n in (lq, 50, 50))
    clean, clean_lse = attention(q, k, v, return_lse=True)
    q[0, 1, 1, 5] = float("nan")
    out, lse = attention(q, k, v, return_lse=True)
    assert torch.isnan(out[0, 1, 1]).all() and torch.isnan(lse[0, 1, 1])
    keep = torch.ones(out.shape[:3], dtype=torch.bool, device=out.device)
    keep[0, 1, 1] = False
    assert torch.equal(out[keep], clean[keep]) and torch.equal(lse[keep], clean_lse[keep])


@cuda
@pytest.mark.cuda
def test_attention_cuda_bad_inputs():
    q = torch.zeros((1, 2, 8, 64), dtype=torch.float16, device="cuda")
    with pytest.raises(TypeError, match="k: dtype"):
        attention(q, q.float(), q)
    with pytest.raises(TypeError, match="k: "):
        attention(q, q.cpu(), q)
    with pytest.raises(TypeError, match="q: expected float32, float16 or bfloat16"):
        attention(q.int(), q.int(), q.int())
    with pytest.raises(ValueError, match="attn_mask: shape"):
        attention(q, q, q, attn_mask=torch.ones((3, 8), dtype=torch.bool, device="cuda"))
    with pytest.raises(ValueError, match="k: 3 kv heads"):
        attention(q, torch.zeros((1, 3, 8, 64), dtype=torch.float16, device="cuda"), q)


# ---- conv2d --------------------------------------------------------------------------------------
def _conv_ref(x, w, b, stride, pads, dilation, groups, relu):
    """float64 CPU reference and the float64 conv of |x|, |w| (the error scale)."""
    x64, w64 = x.double().cpu(), w.double().cpu()
    top, left, bottom, right = pads
    xp = F.pad(x64, (left, right, top, bottom))
    xa = F.pad(x64.abs(), (left, right, top, bottom))
    ref = F.conv2d(xp, w64, None if b is None else b.double().cpu(), stride, 0, dilation, groups)
    mag = F.conv2d(
        xa, w64.abs(), None if b is None else b.double().cpu().abs(), stride, 0, dilation, groups
    )
    if relu:
        ref = ref.clamp_min(0)
    return ref, mag


CONV_CASES = [
    # N, C, H, W, M, KH, KW, stride, pads (t, l, b, r), dilation, groups
    (2, 64, 20, 20, 64, 3, 3, 1, (1, 1, 1, 1), 1, 1),
    (1, 32, 17, 23, 48, 1, 1, 1, (0, 0, 0, 0), 1, 1),
    (2, 3, 41, 37, 16, 7, 7, 2, (3, 3, 3, 3), 1, 1),
    (1, 17, 9, 11, 5, 3, 3, 3, (1, 0, 2, 1), 2, 1),
    (2, 24, 15, 15, 24, 3, 3, 1, (1, 1, 1, 1), 1, 24),  # depthwise
    (1, 8, 12, 12, 16, 5, 5, 2, (2, 2, 2, 2), 1, 8),  # depthwise, multiplier 2
    (2, 16, 10, 10, 32, 3, 3, 1, (1, 1, 1, 1), 1, 2),  # grouped
    (1, 5, 1, 1, 7, 3, 3, 1, (1, 1, 1, 1), 1, 1),  # 1x1 image, odd channels
    (1, 128, 7, 7, 256, 3, 3, 2, (1, 1, 1, 1), 1, 1),
]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_matches_float64(dtype, case, relu):
    N, C, H, W, M, KH, KW, stride, pads, dilation, groups = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = _rand((N, C, H, W), dtype, gen)
    w = _rand((M, C // groups, KH, KW), dtype, gen, scale=1 / math.sqrt(C // groups * KH * KW))
    b = _rand((M,), dtype, gen)
    y = conv2d(
        x,
        w,
        b,
        stride=stride,
        padding=pads,
        dilation=dilation,
        groups=groups,
        activation="relu" if relu else None,
    )
    ref, mag = _conv_ref(x, w, b, stride, pads, dilation, groups, relu)
    assert y.shape == ref.shape and y.dtype == dtype and y.is_cuda
    y64 = y.double().cpu()
    K = C // groups * KH * KW + 1
    # float32 accumulation of K terms, then one rounding to the dtype
    bound = (
        K * EPS[torch.float32] * mag + (0 if dtype == torch.float32 else EPS[dtype] / 2) * ref.abs()
    )
    excess = (y64 - ref).abs() - bound
    assert torch.isfinite(y64).all()
    assert excess.max() <= 1e-30, float(excess.max())


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("padding", ["same_upper", "same_lower", "valid"])
def test_conv2d_auto_pad_and_prepacked_class(padding):
    gen = torch.Generator().manual_seed(5)
    x = _rand((2, 16, 14, 13), torch.float16, gen)
    w = _rand((32, 16, 4, 3), torch.float16, gen, scale=0.1)
    conv = mmfast.ops.Conv2d(w, None, stride=2, padding=padding)
    y = conv(x)
    pads = mmfast.ops.Conv2d(w.cpu().float(), stride=2, padding=padding)._geometry(14, 13)[0]
    ref, mag = _conv_ref(x, w, None, 2, pads, 1, 1, False)
    bound = 16 * 12 * EPS[torch.float32] * mag + EPS[torch.float16] / 2 * ref.abs()
    assert ((y.double().cpu() - ref).abs() <= bound + 1e-30).all()
    with pytest.raises(TypeError, match="weights are on the GPU"):
        conv(x.cpu().float())


@cuda
@pytest.mark.cuda
def test_conv2d_noncontiguous_out_and_stream():
    gen = torch.Generator().manual_seed(9)
    x = _rand((2, 20, 16, 32), torch.bfloat16, gen)[:, :, :, ::2]  # strided view
    w = _rand((24, 20, 3, 3), torch.bfloat16, gen, scale=0.1)
    out = torch.full((2, 24, 16, 16), float("nan"), dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        res = conv2d(x, w, padding=1, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    assert res is out
    ref, mag = _conv_ref(x, w, None, 1, (1, 1, 1, 1), 1, 1, False)
    bound = 180 * EPS[torch.float32] * mag + EPS[torch.bfloat16] / 2 * ref.abs()
    assert ((out.double().cpu() - ref).abs() <= bound + 1e-30).all()


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv2d_empty_image_with_padding_gives_the_bias(dtype):
    x = torch.zeros((2, 4, 0, 5), dtype=dtype, device="cuda")
    w = torch.ones((8, 4, 1, 1), dtype=dtype, device="cuda")
    b = torch.linspace(-1, 1, 8).to(dtype).cuda()
    y = conv2d(x, w, b, padding=1, activation="relu")
    assert y.shape == (2, 8, 2, 7)
    assert torch.equal(y, b.clamp(min=0).view(1, 8, 1, 1).expand(2, 8, 2, 7))


@cuda
@pytest.mark.cuda
def test_conv2d_cuda_bad_inputs():
    x = torch.zeros((1, 4, 8, 8), dtype=torch.float16, device="cuda")
    w = torch.zeros((8, 4, 3, 3), dtype=torch.float16, device="cuda")
    with pytest.raises(TypeError, match="weight: dtype"):
        conv2d(x, w.float())
    with pytest.raises(TypeError, match="weight: "):
        conv2d(x, w.cpu())
    with pytest.raises(ValueError, match="x: has 4 channels"):
        conv2d(x, torch.zeros((8, 3, 3, 3), dtype=torch.float16, device="cuda"))
    with pytest.raises(ValueError, match="empty output"):
        conv2d(x, torch.zeros((8, 4, 9, 9), dtype=torch.float16, device="cuda"))
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="bias: expected shape"):
        conv2d(x, w, torch.zeros(3, dtype=torch.float16, device="cuda"))


# ---- CuPy arrays -------------------------------------------------------------------------------
@cuda
@pytest.mark.cuda
def test_cupy_arrays_attention_and_conv2d():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    q, k, v = (
        cupy.asarray(rng.standard_normal((1, 2, 90, 64)).astype(np.float16)) for _ in range(3)
    )
    with cupy.cuda.Stream(non_blocking=True):  # mmfast enqueues on CuPy's current stream
        out = attention(q, k, v, is_causal=True)
        assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float16
        host = torch.from_numpy(cupy.asnumpy(out))
    ref, _ = _attention_ref(*(torch.from_numpy(cupy.asnumpy(a)) for a in (q, k, v)), causal=True)
    assert _rel_err(host, ref) <= _attn_tol(torch.float16, 64, 90)

    x = cupy.asarray(rng.standard_normal((2, 6, 11, 9)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = conv2d(x, w, stride=2, padding=(1, 0, 2, 1), groups=2)
    assert isinstance(y, cupy.ndarray)
    xt, wt = torch.from_numpy(cupy.asnumpy(x)), torch.from_numpy(cupy.asnumpy(w))
    ref, mag = _conv_ref(xt, wt, None, 2, (1, 0, 2, 1), 1, 2, False)
    bound = 28 * EPS[torch.float32] * mag
    assert ((torch.from_numpy(cupy.asnumpy(y)).double() - ref).abs() <= bound + 1e-30).all()


# ---- without a GPU -------------------------------------------------------------------------------
class _FakeCupyArray:
    """Looks like a CuPy array to mmfast (module name, CUDA array interface) but has no GPU
    memory behind it: lets a GPU-less machine check that a CUDA op is refused cleanly."""

    __module__ = "cupy._fake"

    def __init__(self, shape):
        self.shape = shape
        self.strides = tuple(4 * int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
        self.dtype = np.dtype(np.float32)
        self.data = type("Mem", (), {"ptr": 0})()
        self.device = type("Dev", (), {"id": 0})()
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False)}


def test_overlap_check_of_cuda_outputs():
    # Runs anywhere: the range test behind "out: overlaps ..." on made-up device arrays.
    from mmfast.ops._cuda_arrays import CudaArray as _Arr
    from mmfast.ops._cuda_arrays import overlaps as _overlaps

    def arr(ptr, shape, strides, dtype="float16", device=0):
        return _Arr(None, "torch", ptr, shape, strides, dtype, device)

    q = arr(1000, (1, 2, 4, 8), (64, 32, 8, 1))  # 64 halves: bytes [1000, 1128)
    assert _overlaps(arr(1126, (1,), (1,)), q)
    assert not _overlaps(arr(1128, (1,), (1,)), q)
    assert not _overlaps(arr(900, (50,), (1,)), q)  # ends at 1000
    assert _overlaps(arr(900, (51,), (1,)), q)
    assert not _overlaps(arr(1000, (4,), (1,), device=1), q)  # another GPU
    assert not _overlaps(arr(1000, (0, 4), (4, 1)), q)  # empty
    view = arr(1000, (4, 8), (16, 1))  # every other row of a (8, 8) block: [1000, 1112)
    assert _overlaps(view, arr(1110, (1,), (1,)))


@cuda
@pytest.mark.cuda
def test_cuda_out_must_not_overlap_the_inputs():
    q = torch.zeros((1, 2, 8, 64), dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="out: overlaps q"):
        attention(q, q.clone(), q.clone(), out=q)
    x = torch.zeros((1, 4, 8, 8), dtype=torch.float16, device="cuda")
    w = torch.zeros((4, 4, 1, 1), dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="out: overlaps x"):
        conv2d(x, w, out=x)


@pytest.mark.skipif(HAVE_GPU, reason="checks the GPU-less error path")
def test_cuda_op_without_a_gpu_raises_a_clear_error():
    a = _FakeCupyArray((1, 1, 4, 8))
    with pytest.raises(RuntimeError, match="CUDA kernels are unavailable"):
        attention(a, a, a)
    w = _FakeCupyArray((2, 1, 3, 3))
    with pytest.raises(RuntimeError, match="CUDA kernels are unavailable"):
        conv2d(a, w, padding=1)


# ---- the CUDA binding's named fields, checked before the device is touched (runs anywhere) -----
def _cuda_module():
    if not mmfast._C.cuda_built:
        pytest.skip("built without CUDA kernels")
    from mmfast._cuda import cuda_module

    return cuda_module()


def test_cuda_binding_takes_named_fields_and_checks_them():
    mod = _cuda_module()
    attn = dict(
        q=0, k=0, v=0, out=0, lse=0, mask=0, mask_kind=mod.MaskKind.none, dtype=mod.DType.bf16,
        batch=0, q_heads=4, kv_heads=3, q_len=8, kv_len=8, head_dim=64, v_head_dim=64,
        q_stride=(2048, 512, 64), k_stride=(1536, 512, 64), v_stride=(1536, 512, 64),
        out_stride=(2048, 512, 64), mask_stride=(0, 0, 0, 0), scale=0.125, softcap=0.0,
        causal=False, causal_offset=0, device=0, stream=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="k: its head count must divide"):
        mod.attention(**attn)
    ok = {**attn, "kv_heads": 4}
    for bad, match in [
        ({"head_dim": mmfast._C.ATTENTION_MAX_HEAD_DIM + 1}, "q: head dim 257 is outside"),
        ({"batch": mmfast._C.CUDA_MAX_GRID_YZ + 1}, "at most 65535 on CUDA"),
        ({"mask": 64}, "attn_mask: a mask needs a kind"),
        ({"softcap": -1.0}, "softcap: must be finite"),
        ({"batch": 1}, "null pointer"),
    ]:
        with pytest.raises(ValueError, match=match):
            mod.attention(**{**ok, **bad})
    with pytest.raises(TypeError):  # positional arrays of sizes are gone
        mod.attention(**{**ok, "dims": (1, 4, 4, 8, 8, 64, 64)})

    conv = dict(
        x=0, weight=0, bias=0, out=0, workspace=0, workspace_bytes=0, x_shape=(1, 4, 8, 8),
        weight_shape=(4, 4, 3, 3), out_shape=(1, 4, 6, 6), x_stride=(256, 64, 8, 1),
        out_stride=(144, 36, 6, 1), stride=(1, 1), dilation=(1, 1), pads=(0, 0, 0, 0),
        groups=1, relu=False, dtype=mod.DType.f16, device=0, stream=0,
    )  # fmt: skip
    for bad, match in [
        ({"out_shape": (1, 4, 5, 6)}, "out: shape does not match"),
        ({"x_stride": (256, 64, 16, 2)}, "x: must be C-contiguous on CUDA"),
        ({"pads": (-1, 0, 0, 0)}, "padding: must be non-negative"),
        ({"weight_shape": (4, 4, 17, 17)}, "taps are not supported"),
        ({"dilation": (2**62, 1)}, "dilation: the dilated kernel's size overflows"),
        ({}, "x: null pointer"),
    ]:
        with pytest.raises(ValueError, match=match):
            mod.conv2d(**{**conv, **bad})
    shapes = {k: conv[k] for k in ("x_shape", "weight_shape", "out_shape", "stride", "dilation")}
    with pytest.raises(ValueError, match="groups: must be positive"):
        mod.conv2d_workspace_bytes(**shapes, pads=(0, 0, 0, 0), groups=0, dtype=mod.DType.f16,
                                   device=0)  # fmt: skip


class _FakeCudaArray(_FakeCupyArray):
    """A fake CuPy array at a made-up address (0: a null pointer)."""

    __module__ = "cupy._fake"

    def __init__(self, shape, ptr):
        super().__init__(shape)
        self.data = type("Mem", (), {"ptr": ptr})()
        self.flags = type("Flags", (), {"c_contiguous": True})()


def test_cuda_path_fills_the_binding_fields(monkeypatch):
    # The Python CUDA path all the way into the binding, on any machine: q and x are null
    # pointers, so the binding's check refuses them before any device work.
    mod = _cuda_module()
    from types import SimpleNamespace

    from mmfast.ops import _attention, _conv2d

    shim = SimpleNamespace(
        DType=mod.DType,
        MaskKind=mod.MaskKind,
        attention=mod.attention,
        conv2d=mod.conv2d,
        conv2d_workspace_bytes=lambda **kw: 0,
    )
    for m in (_attention, _conv2d):
        monkeypatch.setattr(m, "cuda_kernels", lambda: shim)
        monkeypatch.setattr(m, "cuda_stream", lambda a: 0)
    monkeypatch.setattr(_conv2d, "cuda_contiguous", lambda a, name: a)
    q = _FakeCudaArray((1, 2, 8, 64), 0)
    k, v = _FakeCudaArray((1, 2, 8, 64), 1 << 20), _FakeCudaArray((1, 2, 8, 64), 1 << 21)
    out = _FakeCudaArray((1, 2, 8, 64), 1 << 22)
    with pytest.raises(ValueError, match="q, k, v, out: null pointer"):
        attention(q, k, v, out=out, is_causal=True)
    x = _FakeCudaArray((1, 4, 8, 8), 0)
    w = _FakeCudaArray((4, 4, 3, 3), 1 << 20)
    y = _FakeCudaArray((1, 4, 6, 6), 1 << 21)
    with pytest.raises(ValueError, match="x: null pointer"):
        mmfast.ops.Conv2d(w)(x, out=y)
