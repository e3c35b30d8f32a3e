"""The Winograd F(2x2, 3x3) convolution (csrc/conv2d/conv2d_winograd.*) against a float64
reference, within its derived per-element bound (mmfast/ops/_winograd_bound.py), on every
kernel variant; the algorithm choice and its errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from conv_reference import conv2d_ref
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmfast import _C, ops
from mmfast.ops._winograd_bound import winograd_error_bound


@pytest.fixture
def small_blocks() -> Iterator[None]:
    """Blocks of 6 tiles: many blocks, image groups and GEMM chunks at small sizes."""
    _C._set_winograd_block_tiles(6)
    try:
        yield
    finally:
        _C._set_winograd_block_tiles(0)


def case(n, c, m, h, w, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    return x, wt, b


def check(x, wt, b, pads=(1, 1, 1, 1), relu=False, out=None):
    conv = ops.Conv2d(
        wt, b, padding=pads, algorithm="winograd", activation="relu" if relu else None
    )
    assert conv.algorithm == "winograd"
    y = conv(x) if out is None else conv(x, out=out)
    y = np.asarray(y)
    ref = conv2d_ref(x, wt, b, (1, 1), pads, (1, 1), 1)
    if relu:
        ref = np.maximum(ref, 0)
    bound = winograd_error_bound(x, wt, b, pads)
    assert y.shape == ref.shape and y.dtype == np.float32
    err = np.abs(y - ref)
    bad = err > bound
    assert not bad.any(), f"{bad.sum()} of {bad.size} outside the bound; max {err.max()}"
    return y, ref, bound


# Channel counts around the 16-channel blocks and 64-channel panels (and the half panel of
# <= 32 channels), odd and even output sides (a last tile half outside), 1x1 and 2x2 images.
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 3, 5, 2, 2),
    (2, 15, 17, 7, 9),
    (1, 16, 32, 8, 8),
    (1, 17, 33, 5, 12),
    (3, 33, 64, 6, 5),
    (1, 20, 65, 11, 3),
    (2, 64, 130, 9, 10),
    (1, 70, 31, 13, 13),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_within_bound(variant, shape):
    check(*case(*shape, seed=sum(shape)))


@pytest.mark.parametrize(
    "pads", [(0, 0, 0, 0), (1, 1, 1, 1), (2, 0, 1, 3), (0, 2, 2, 0), (3, 3, 3, 3)]
)
def test_paddings(variant, pads):
    x, wt, b = case(2, 19, 40, 9, 8, seed=sum(pads))
    check(x, wt, b, pads=pads)


def test_relu_no_bias_and_nan(variant):
    x, wt, _ = case(1, 16, 48, 10, 10, seed=3)
    check(x, wt, None, relu=True)
    x[0, 5, 4, 4] = np.nan  # NaN stays NaN through ReLU, only where the input reaches
    y = ops.Conv2d(wt, None, padding=1, algorithm="winograd", activation="relu")(x)
    touched = np.zeros((10, 10), bool)
    touched[3:6, 3:6] = True
    assert np.isnan(y[0][:, touched]).all() and not np.isnan(y[0][:, ~touched]).any()


def test_many_blocks_groups_and_chunks(variant, small_blocks):
    # 6-tile blocks: tiles of one image split across blocks, images grouped into one block
    for shape in [(3, 16, 70, 7, 11), (5, 40, 64, 3, 3), (2, 80, 200, 12, 12)]:
        check(*case(*shape, seed=shape[0]))


def test_thread_count_does_not_change_results(variant):
    # each output's sums run in a fixed order whatever the threads: bit-identical
    x, wt, b = case(2, 48, 96, 15, 15, seed=4)
    conv = ops.Conv2d(wt, b, padding=1, algorithm="winograd")
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = conv(x)
        _C.set_num_threads(2)
        two = conv(x)
    finally:
        _C.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_strided_input_and_output(variant):
    x, wt, b = case(2, 24, 40, 9, 13, seed=5)
    xs = np.ascontiguousarray(np.swapaxes(x, 2, 3)).swapaxes(2, 3)  # column-major planes
    big = np.full((2, 40, 9, 26), np.nan, np.float32)
    out = big[:, :, :, ::2]  # every other column
    y, _, _ = check(xs, wt, b, out=out)
    assert np.isnan(big[:, :, :, 1::2]).all()
    contiguous = ops.Conv2d(wt, b, padding=1, algorithm="winograd")(x)
    np.testing.assert_array_equal(y, contiguous)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    x, wt, b = case(1, 32, 64, 12, 12, seed=6)
    y = ops.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), padding=1)
    assert isinstance(y, torch.Tensor)
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(),
        torch.from_numpy(wt).double(),
        torch.from_numpy(b).double(),
        padding=1,
    )
    bound = torch.from_numpy(winograd_error_bound(x, wt, b, (1, 1, 1, 1)))
    assert ((y.double() - ref).abs() <= bound).all()


def test_bound_catches_wrong_results(variant):
    # the bound is tight enough to catch a lost channel, a lost bias, a shifted tile grid
    x, wt, b = case(1, 32, 48, 12, 12, seed=7)
    y, ref, bound = check(x, wt, b)
    x_lost = x.copy()
    x_lost[:, 13] = 0
    lost = ops.Conv2d(wt, b, padding=1, algorithm="winograd")(x_lost)
    assert (np.abs(lost - ref) > bound).mean() > 0.5
    no_bias = ops.Conv2d(wt, None, padding=1, algorithm="winograd")(x)
    assert (np.abs(no_bias - ref) > bound).mean() > 0.5
    shifted = np.roll(y, 1, axis=3)
    assert (np.abs(shifted - ref) > bound).mean() > 0.5


def test_error_no_worse_than_the_direct_kernel():
    # same inputs, both kernels: Winograd's shorter sums (C + 9 roundings against 9C) keep its
    # error at or below the direct kernel's on layers of real sizes (measured 0.3-0.6x)
    x, wt, b = case(1, 128, 128, 28, 28, seed=8)
    wt /= np.sqrt(9 * 128)
    ref = conv2d_ref(x, wt, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    wino = ops.conv2d(x, wt, b, padding=1, algorithm="winograd")
    direct = ops.conv2d(x, wt, b, padding=1, algorithm="direct")
    assert np.abs(wino - ref).max() <= np.abs(direct - ref).max()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(c=16, m=32), "winograd"),
        (dict(c=256, m=256), "winograd"),
        (dict(c=8, m=64), "direct"),  # too few input channels
        (dict(c=64, m=16), "direct"),  # too few output channels
        (dict(c=64, m=64, stride=2), "direct"),
        (dict(c=64, m=64, dilation=2), "direct"),
        (dict(c=64, m=64, k=5), "direct"),
        (dict(c=64, m=64, groups=2), "direct"),
        (dict(c=64, m=64, precision="bf16"), "direct"),
    ],
)
def test_auto_choice(kwargs, expected):
    kw = dict(kwargs)
    c, m, k, groups = kw.pop("c"), kw.pop("m"), kw.pop("k", 3), kw.get("groups", 1)
    w = np.zeros((m, c // groups, k, k), np.float32)
    conv = ops.Conv2d(w, padding=1, **kw)
    if _C.active_variant() != "avx512":
        expected = "direct"  # Winograd is chosen only with the AVX-512 kernels
    assert conv.algorithm == expected
    assert f"algorithm={expected!r}" in repr(conv)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(algorithm="fft"), "algorithm: expected one of"),
        (dict(algorithm="winograd", stride=2), "algorithm: 'winograd' computes 3x3"),
        (dict(algorithm="winograd", groups=2), "algorithm: 'winograd' computes 3x3"),
        (dict(algorithm="winograd", precision="bf16"), "precision is 'bf16'"),
    ],
)
def test_bad_algorithm(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.Conv2d(np.zeros((8, 8 // kwargs.get("groups", 1), 3, 3), np.float32), **kwargs)


def test_winograd_on_a_5x5_filter_is_refused():
    with pytest.raises(ValueError, match="algorithm: 'winograd' computes 3x3"):
        ops.conv2d(
            np.zeros((1, 4, 8, 8), np.float32),
            np.zeros((4, 4, 5, 5), np.float32),
            algorithm="winograd",
        )


def test_native_layer_checks():
    w = np.zeros((8, 4, 3, 3), np.float32)
    packed = _C.conv2d_winograd_pack(w)
    x = np.zeros((1, 4, 6, 6), np.float32)
    out = np.zeros((1, 8, 6, 6), np.float32)
    with pytest.raises(ValueError, match="packed: size"):
        _C.conv2d_winograd(x, packed[:-1], None, out, 8, [1, 1, 1, 1], False)
    with pytest.raises(ValueError, match="out"):
        _C.conv2d_winograd(x, packed, None, out[:, :, :5], 8, [1, 1, 1, 1], False)
    with pytest.raises(ValueError, match="weight: the Winograd kernel takes 3x3"):
        _C.conv2d_winograd_pack(np.zeros((8, 4, 5, 5), np.float32))


def test_auto_is_direct_off_avx512():
    previous = _C.active_variant()
    try:
        _C.set_variant("portable")
        assert ops.Conv2d(np.zeros((64, 64, 3, 3), np.float32), padding=1).algorithm == "direct"
    finally:
        _C.set_variant(previous)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 70),
    m=st.integers(1, 140),
    h=st.integers(1, 18),
    w=st.integers(1, 18),
    pads=st.tuples(*(st.integers(0, 3) for _ in range(4))),
    block=st.sampled_from([0, 6, 12, 30]),
    threads=st.integers(1, 2),
    bias=st.booleans(),
    relu=st.booleans(),
    fortran=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_layers_within_bound(n, c, m, h, w, pads, block, threads, bias, relu, fortran, seed):
    assume(h + pads[0] + pads[2] >= 3 and w + pads[1] + pads[3] >= 3)
    x, wt, b = case(n, c, m, h, w, seed=seed, bias=bias)
    if fortran:
        x = np.asfortranarray(x)  # strided rows: the scalar fill
    before = _C.get_num_threads()
    _C._set_winograd_block_tiles(block)
    _C.set_num_threads(threads)
    try:
        check(x, wt, b, pads=pads, relu=relu)
    finally:
        _C._set_winograd_block_tiles(0)
        _C.set_num_threads(before)


def test_stale_workspace_never_leaks(variant):
    # a call with NaN inputs leaves NaN in the (reused) workspace; a later call whose last
    # channel block is partly padding (C = 17) must read zeros there, not the stale NaN
    before = _C.get_num_threads()
    _C.set_num_threads(1)
    try:
        nan = np.full((1, 32, 20, 20), np.nan, np.float32)
        ops.conv2d(nan, np.ones((32, 32, 3, 3), np.float32), padding=1, algorithm="winograd")
        for x in (
            np.ones((1, 17, 20, 20), np.float32),
            np.asfortranarray(np.ones((1, 17, 20, 20), np.float32)),
        ):
            check(x, np.ones((32, 17, 3, 3), np.float32), None)
    finally:
        _C.set_num_threads(before)
