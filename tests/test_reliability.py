"""Regression tests for the native ops' reliability findings (issue 18): each test is built from
its reproducer and failed (crash, hang, silent wrong answer, or memory kept) before the fix.

Tolerances: outputs are compared with the ops' own results on well-behaved inputs (bit for bit,
same kernel) or with a float64 reference under the float32 rounding bound of test_conv2d /
test_attention (a K-term dot product: K * eps * sum |terms|).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conv_reference import conv2d_tolerance
from numpy.lib.stride_tricks import as_strided

import mmfast
from mmfast import _C, ops
from mmfast.ops._winograd_bound import winograd_error_bound

EPS = float(np.finfo(np.float32).eps)
VARIANTS = _C.runnable_variants()


@pytest.fixture(params=VARIANTS)
def variant(request):
    active = _C.active_variant()
    _C.set_variant(request.param)
    yield request.param
    _C.set_variant(active)


def misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` whose data starts 1 byte past an aligned address (a view into a buffer at
    an odd offset, as np.frombuffer makes)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned
    return m


# ---- 1. conv2d workspace: huge dilation / padding ------------------------------------------------
def test_a_one_off_huge_workspace_is_not_kept():
    # dilation = padding = 4096 on a 1x1 image: the planes are (1 + 8192)^2 floats (~270 MB
    # once; the issue measured 64 MB kept with its shape); the result is one tap.
    x = np.full((1, 1, 1, 1), 2.0, np.float32)
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    y = ops.conv2d(x, w, np.ones(1, np.float32), dilation=4096, padding=4096)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 2.0 * w[0, 0, 1, 1] + 1.0
    assert _C._thread_workspace_bytes() <= 32 << 20
    # an ordinary call keeps its (small) workspace for the next one
    ops.conv2d(np.ones((1, 8, 16, 16), np.float32), np.ones((8, 8, 3, 3), np.float32), padding=1)
    assert 0 < _C._thread_workspace_bytes() <= 32 << 20


# ---- 2. set_num_threads while other threads are inside kernels -----------------------------------
def test_set_num_threads_while_kernels_run():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 24, 24)).astype(np.float32)
    w = (rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    dw = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    q, k, v = (rng.standard_normal((1, 4, 300, 32)).astype(np.float32) for _ in range(3))
    conv, depthwise = ops.Conv2d(w, padding=1), ops.Conv2d(dw, padding=1, groups=32)
    want = [conv(x), depthwise(x), ops.attention(q, k, v)]
    before = mmfast.get_num_threads()
    errors: list[str] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            got = [conv(x), depthwise(x), ops.attention(q, k, v)]
            # the result does not depend on the thread count (test_threading proves it)
            for g, r in zip(got, want, strict=True):
                if not np.array_equal(g, r):
                    errors.append("a result changed while the pool was resized")

    workers = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    try:
        for t in workers:
            t.start()
        for i in range(60):
            mmfast.set_num_threads(1 + i % 3)
            time.sleep(0.002)
        stop.set()
        for t in workers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in workers), "a kernel hung after set_num_threads"
    finally:
        stop.set()
        mmfast.set_num_threads(before)
    assert not errors, errors[0]


# ---- 3. the out= overlap check is bounded --------------------------------------------------------
def test_overlap_check_is_bounded():
    from mmfast.ops._arrays import overlap

    # numpy's own too-hard pair (an exact answer costs minutes); 192 MB that are never touched
    x = np.zeros(192163377, dtype=np.int8)
    x1 = as_strided(x, strides=(36674, 61119, 85569), shape=(1049, 1049, 1049))
    x2 = as_strided(x[64023025:], strides=(12223, 12224, 1), shape=(1049, 1049, 1))
    t0 = time.perf_counter()
    assert overlap(x1, x2) is None
    assert time.perf_counter() - t0 < 2.0
    a = np.zeros(10, np.float32)
    assert overlap(a[:5], a[5:]) is False and overlap(a[:6], a[5:]) is True


def small_inputs(seed: int) -> tuple[np.ndarray, ...]:
    """q, k, v (1, 2, 9, 8); x (1, 3, 7, 7), w (4, 3, 3, 3); s (5, 11): one small call each."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, 2, 9, 8)).astype(np.float32) for _ in range(3))
    x = rng.standard_normal((1, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    s = rng.standard_normal((5, 11)).astype(np.float32)
    return q, k, v, x, w, s


def test_an_undecided_overlap_computes_into_a_fresh_buffer(monkeypatch):
    from mmfast.ops import _attention, _conv2d, _softmax

    q, k, v, x, w, s = small_inputs(1)
    want = [ops.attention(q, k, v), ops.conv2d(x, w, padding=1), ops.softmax(s)]
    for m in (_attention, _conv2d, _softmax):
        monkeypatch.setattr(m, "overlap", lambda a, b: None)  # "could not decide"
    outs = [np.empty_like(want[0]), np.empty_like(want[1]), np.empty_like(want[2])]
    ops.attention(q, k, v, out=outs[0])
    ops.conv2d(x, w, padding=1, out=outs[1])
    ops.softmax(s, out=outs[2])
    for o, r in zip(outs, want, strict=True):
        np.testing.assert_array_equal(o, r)


# ---- 4. NaN: propagated on every variant and path (as PyTorch does) ------------------------------
def _conv_ref(x, w, pad):
    """float64 conv (cross-correlation), NaN propagating; then ReLU that keeps NaN."""
    x64 = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, hp, wp = x64.shape
    m, cg, kh, kw = w.shape
    g = c // cg
    oh, ow = hp - kh + 1, wp - kw + 1
    y = np.zeros((n, m, oh, ow))
    for mi in range(m):
        gi = mi // (m // g)
        for i in range(kh):
            for j in range(kw):
                patch = x64[:, gi * cg : (gi + 1) * cg, i : i + oh, j : j + ow]
                y[:, mi] += np.einsum("nchw,c->nhw", patch, w[mi, :, i, j].astype(np.float64))
    return np.maximum(y, 0.0)  # np.maximum propagates NaN


@pytest.mark.parametrize(
    "path,c,m,groups,strided_out",
    [
        ("spatial", 4, 8, 1, False),  # vector stores
        ("spatial", 4, 8, 1, True),  # scalar stores (strided out)
        ("channel", 32, 48, 1, False),  # the channel-vectorised GEMM (AVX-512; else spatial)
        ("auto", 6, 6, 6, False),  # depthwise
        ("winograd", 32, 48, 1, False),  # row stores
        ("winograd", 32, 48, 1, True),  # scalar stores (strided out)
    ],
)
def test_relu_keeps_nan_on_every_path(variant, path, c, m, groups, strided_out):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, c, 9, 9)).astype(np.float32)
    x[0, :, 4, 4] = np.nan
    w = rng.standard_normal((m, c // groups, 3, 3)).astype(np.float32)
    algorithm = "winograd" if path == "winograd" else "direct"
    conv = ops.Conv2d(w, padding=1, groups=groups, activation="relu", algorithm=algorithm)
    _C._set_conv_path("auto" if path == "winograd" else path)
    try:
        if strided_out:
            buf = np.full((1, m, 9, 18), 7.0, np.float32)
            y = conv(x, out=buf[..., ::2])
        else:
            y = conv(x)
    finally:
        _C._set_conv_path("auto")
    ref = _conv_ref(x, w, 1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(ref).sum() == m * 9  # the 3x3 neighbourhood of the NaN pixel, per channel
    finite = ~np.isnan(ref)
    # the kernel's float32 rounding bound (conv_reference, _winograd_bound) on the NaN-free input
    if algorithm == "winograd":
        bound = winograd_error_bound(np.nan_to_num(x), w, None, (1, 1, 1, 1))
    else:
        bound = conv2d_tolerance(np.nan_to_num(x), w, None, (1, 1), (1, 1, 1, 1), (1, 1), groups)
    assert (np.abs(y[finite] - ref[finite]) <= bound[finite]).all()


@pytest.mark.parametrize("lq", [3, 70])  # row-by-row path (a decode step), then vector tiles
def test_attention_nan_scores_give_nan_rows_not_masked_rows(variant, lq):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, lq, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 40, 16)).astype(np.float32) for _ in range(2))
    clean, clean_lse = ops.attention(q, k, v, return_lse=True)
    q[0, 1, 1, 5] = np.nan  # one query row's scores are all NaN
    out, lse = ops.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 1, 1]).all() and np.isnan(lse[0, 1, 1])
    keep = np.ones(out.shape[:3], bool)
    keep[0, 1, 1] = False
    np.testing.assert_array_equal(out[keep], clean[keep])
    np.testing.assert_array_equal(lse[keep], clean_lse[keep])
    # every key masked is still the "no key" marker: zeros and -inf
    out, lse = ops.attention(q, k, v, attn_mask=np.zeros((lq, 40), bool), return_lse=True)
    assert (out == 0).all() and np.isneginf(lse).all()


def test_softcap_must_be_a_normal_float():
    q = np.zeros((1, 1, 5, 8), np.float32)
    k = v = np.ones((1, 1, 6, 8), np.float32)
    with pytest.raises(ValueError, match="softcap: must be 0 \\(off\\) or in"):
        ops.attention(q, k, v, softcap=1e-39)  # 1 / softcap overflowed: 0 * inf = NaN
    with pytest.raises(ValueError, match="softcap: must be 0 \\(off\\) or in"):
        ops.attention(q, k, v, softcap=3e38)  # softcap * log2(e) overflowed
    out = ops.attention(q, k, v, softcap=float(np.finfo(np.float32).tiny))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)  # zero scores: a uniform average of ones
    with pytest.raises(ValueError, match="softcap"):
        out = np.empty((1, 1, 5, 8), np.float32)
        _C.attention(q, k, v, out, None, None, False, 0, 1.0, 1e-39)


# ---- 4b. arrays at an odd byte offset -----------------------------------------------------------
def test_misaligned_arrays_give_the_aligned_results(variant):
    q, k, v, x, w, s = small_inputs(4)
    mask = np.random.default_rng(5).standard_normal((9, 9)).astype(np.float32)

    att = ops.attention(q, k, v, attn_mask=mask)
    got = ops.attention(misaligned(q), misaligned(k), misaligned(v), attn_mask=misaligned(mask))
    np.testing.assert_array_equal(got, att)
    out = misaligned(np.zeros_like(att))
    ops.attention(q, k, v, attn_mask=mask, out=out)
    np.testing.assert_array_equal(out, att)

    y = ops.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(ops.conv2d(misaligned(x), w, padding=1), y)
    out = misaligned(np.zeros_like(y))
    ops.conv2d(x, w, padding=1, out=out)
    np.testing.assert_array_equal(out, y)

    sm = ops.log_softmax(s)
    np.testing.assert_array_equal(ops.log_softmax(misaligned(s)), sm)
    out = misaligned(np.zeros_like(sm))
    ops.log_softmax(s, out=out)
    np.testing.assert_array_equal(out, sm)


def test_native_layer_refuses_misaligned_data():
    s = misaligned(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="x: data must be aligned"):
        _C.softmax(s, np.zeros((2, 3), np.float32))
    q = misaligned(np.zeros((1, 1, 2, 4), np.float32))
    k = np.zeros((1, 1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="q: data must be aligned"):
        _C.attention(q, k, k, np.zeros_like(k), None, None, False, 0, 1.0, 0.0)


# ---- review follow-ups ---------------------------------------------------------------------------
def test_set_num_threads_before_fork_then_in_the_child():
    # The fork handler used to be registered only when a kernel first made the pool: a child of
    # a process that had only called set_num_threads() inherited threads it lacked and hung.
    import subprocess
    import sys

    code = (
        "import os, sys, mmfast, numpy as np\n"
        "mmfast.set_num_threads(3)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    mmfast.set_num_threads(2)\n"
        "    x = np.ones((1, 8, 32, 32), np.float32)\n"
        "    y = mmfast.ops.conv2d(x, np.ones((8, 8, 3, 3), np.float32), padding=1)\n"
        "    os._exit(0 if y[0, 0, 5, 5] == 72 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-500:]


def test_set_num_threads_limits():
    before = mmfast.get_num_threads()
    for n in (0, _C.MAX_THREADS + 1, 10**6):
        with pytest.raises(ValueError, match="n: must be >= 1 and <= 1024"):
            mmfast.set_num_threads(n)
    assert mmfast.get_num_threads() == before


def test_out_overlapping_the_mask_is_refused():
    # The mask was not in the overlap check: out written while the mask was read (wrong values).
    rng = np.random.default_rng(5)
    L = 64
    q, k, v = (rng.standard_normal((1, 2, L, 16)).astype(np.float32) for _ in range(3))
    buf = rng.standard_normal((1, 2, L, 16)).astype(np.float32)
    mask = buf[:, :, L - 1 :, :L][..., :16]  # one row of out's buffer, broadcast to every query
    with pytest.raises(ValueError, match="out: overlaps attn_mask"):
        ops.attention(q, k[:, :, :16], v[:, :, :16], attn_mask=mask, out=buf)


def test_a_workspace_out_of_proportion_to_the_input_is_refused():
    # padding 36000 on a 1x1 image: ~20 GB of planes for one output (overcommit would grant
    # it, filling it would get the process killed). Refused before anything is allocated.
    x = np.ones((1, 1, 1, 1), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="padding, dilation: the convolution would need a"):
        ops.conv2d(x, w, dilation=36000, padding=36000)
    assert _C._thread_workspace_bytes() <= 256 << 20
