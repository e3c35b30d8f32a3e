"""mmfast.ops.conv2d / Conv2d against float64 references (torch and numpy) and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
from conv_reference import auto_tolerance, conv2d_ref
from hypothesis import given
from hypothesis import strategies as st

from mmfast import ops
from mmfast.ops._conv2d import resolve_padding


def check(x, w, b, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1, relu=False):
    y = ops.conv2d(
        x,
        w,
        b,
        stride=stride,
        padding=pads,
        dilation=dilation,
        groups=groups,
        activation="relu" if relu else None,
    )
    # every output element must be written: a NaN-filled `out` ends up equal to y
    out = np.full(y.shape, np.nan, np.float32)
    ops.conv2d(
        x,
        w,
        b,
        stride=stride,
        padding=pads,
        dilation=dilation,
        groups=groups,
        activation="relu" if relu else None,
        out=out,
    )
    np.testing.assert_array_equal(out, y)
    ref = conv2d_ref(x, w, b, stride, pads, dilation, groups)
    tol = auto_tolerance(x, w, b, stride, pads, dilation, groups)
    if relu:
        ref = np.maximum(ref, 0)
    assert y.shape == ref.shape and y.dtype == np.float32
    bad = np.abs(y - ref) > tol
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} outside the bound; max err {np.abs(y - ref).max()}"
    )
    return y


@st.composite
def conv_cases(draw):
    groups_kind = draw(st.sampled_from(["one", "two", "depthwise", "depthwise_mult"]))
    cg = draw(st.sampled_from([1, 3, 5, 17]))
    if groups_kind == "one":
        groups, c, m = 1, cg, draw(st.sampled_from([1, 3, 5, 8, 17, 40, 67]))
    elif groups_kind == "two":
        groups, c = 2, 2 * cg
        m = 2 * draw(st.sampled_from([1, 3, 5, 9]))
    else:
        c = draw(st.sampled_from([1, 3, 5, 17]))
        groups, mult = c, (1 if groups_kind == "depthwise" else draw(st.sampled_from([2, 3])))
        m = c * mult
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 4)) for _ in range(4))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, span_h - pads[0] - pads[2]), span_h + 20))
    w = draw(st.integers(max(1, span_w - pads[1] - pads[3]), span_w + 20))
    n = draw(st.sampled_from([1, 1, 2]))
    return dict(
        n=n,
        c=c,
        h=h,
        w=w,
        m=m,
        kh=kh,
        kw=kw,
        stride=(sh, sw),
        dilation=(dh, dw),
        pads=pads,
        groups=groups,
        bias=draw(st.booleans()),
        relu=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(np.float32)
    wt = rng.standard_normal(
        (case["m"], case["c"] // case["groups"], case["kh"], case["kw"])
    ).astype(np.float32)
    b = rng.standard_normal(case["m"]).astype(np.float32) if case["bias"] else None
    return x, wt, b


@given(case=conv_cases())
def test_random_convolutions_match_float64(variant, conv_path, case):
    x, w, b = make(case)
    check(x, w, b, case["stride"], case["pads"], case["dilation"], case["groups"], case["relu"])


@pytest.mark.export
@given(case=conv_cases())
def test_random_convolutions_match_torch_float64(case):
    torch = pytest.importorskip("torch")
    x, w, b = make(case)
    top, left, bottom, right = case["pads"]
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    ref = torch.nn.functional.conv2d(
        xp,
        torch.from_numpy(w).double(),
        None if b is None else torch.from_numpy(b).double(),
        stride=case["stride"],
        dilation=case["dilation"],
        groups=case["groups"],
    ).numpy()
    y = ops.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(w),
        None if b is None else torch.from_numpy(b),
        stride=case["stride"],
        padding=case["pads"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    assert isinstance(y, torch.Tensor)
    tol = auto_tolerance(x, w, b, case["stride"], case["pads"], case["dilation"], case["groups"])
    assert (np.abs(y.numpy() - ref) <= tol).all()


@pytest.mark.parametrize(
    "c,m,hw,k,stride,pad,groups",
    [
        (64, 64, 56, 3, 1, 1, 1),  # ResNet-style shapes: the benchmark's, scaled down in batch
        (128, 128, 28, 3, 1, 1, 1),
        (256, 256, 14, 3, 2, 1, 1),
        (64, 256, 56, 1, 1, 0, 1),
        (3, 64, 64, 7, 2, 3, 1),
        (32, 32, 112, 3, 1, 1, 32),
        (32, 64, 30, 3, 2, 1, 32),  # depthwise with multiplier, strided
    ],
)
def test_network_shapes(variant, conv_path, c, m, hw, k, stride, pad, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((m, c // groups, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    check(x, w, b, (stride, stride), (pad,) * 4, (1, 1), groups, relu=True)


@pytest.mark.parametrize(
    "n,c,m,hw,k,stride,pad",
    [
        (5, 32, 40, 5, 3, 1, 1),  # small images: the channel path batches all 5 images
        (3, 24, 48, 7, 1, 1, 0),  # 1x1 direct: images read in place, image stride xs_n
        (10, 64, 32, 60, 3, 1, 1),  # large planes: batches of 8 then 2 (the 8 MB cap)
        (4, 16, 20, 9, 3, 2, 1),  # strided
    ],
)
def test_batched_images_match_one_image_at_a_time(variant, conv_path, n, c, m, hw, k, stride, pad):
    # The channel path multiplies several images' positions in one GEMM: each image's result
    # must equal its own single-image convolution (same arithmetic, so exactly), and the
    # float64 reference within the rounding bound.
    rng = np.random.default_rng(n * 100 + c)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    y = check(x, w, b, (stride, stride), (pad,) * 4, relu=True)
    conv = ops.Conv2d(w, b, stride=stride, padding=pad, activation="relu")
    for i in range(n):
        np.testing.assert_array_equal(conv(x[i : i + 1])[0], y[i])
    # strided output, batch through a view
    out = np.full((m, n, y.shape[2], y.shape[3]), np.nan, np.float32).transpose(1, 0, 2, 3)
    conv(x, out=out)
    np.testing.assert_array_equal(out, y)


def test_one_by_one_images_and_single_channel(variant):
    rng = np.random.default_rng(1)
    for c, m, k, pads in [(1, 1, 1, 0), (3, 5, 3, 1), (17, 4, 7, 3)]:
        x = rng.standard_normal((2, c, 1, 1)).astype(np.float32)
        w = rng.standard_normal((m, c, k, k)).astype(np.float32)
        check(x, w, None, pads=(pads,) * 4)


def test_non_contiguous_inputs_and_out(variant):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((2, 8, 20, 26)).astype(np.float32)
    x = base[:, ::2, 1::1, ::2]  # channel and width strides
    w_base = rng.standard_normal((6, 4, 3, 3, 2)).astype(np.float32)
    w = w_base[..., 0]  # non-contiguous weight
    b = rng.standard_normal(12).astype(np.float32)[::2]
    y = check(x, w, b, pads=(1, 2, 0, 1))
    out = np.zeros((y.shape[0], y.shape[3], y.shape[1], y.shape[2]), np.float32).transpose(
        0, 2, 3, 1
    )
    ops.conv2d(x, w, b, padding=(1, 2, 0, 1), out=out)
    np.testing.assert_array_equal(out, y)
    tx = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # NCWH memory
    np.testing.assert_array_equal(ops.conv2d(tx, w, b, padding=(1, 2, 0, 1)), y)


def test_prepacked_layer_reuses_weights(variant):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    conv = ops.Conv2d(w, b, stride=2, padding="same_upper", activation="relu")
    for hw in [(9, 9), (16, 11), (1, 1)]:  # auto_pad resolved per input size
        x = rng.standard_normal((1, 8, *hw)).astype(np.float32)
        pads = resolve_padding("same_upper", hw, (3, 3), (2, 2), (1, 1))
        y = conv(x)
        ref = np.maximum(conv2d_ref(x, w, b, (2, 2), pads, (1, 1), 1), 0)
        assert y.shape == (1, 16, -(-hw[0] // 2), -(-hw[1] // 2))
        assert (np.abs(y - ref) <= auto_tolerance(x, w, b, (2, 2), pads, (1, 1), 1)).all()
    w[:] = 0  # packed at construction: later changes to the caller's array don't leak in
    assert np.abs(conv(x)).max() > 0


@pytest.mark.parametrize("mode", ["valid", "same_upper", "same_lower"])
@pytest.mark.parametrize("k,s,d,size", [(3, 1, 1, 7), (4, 2, 1, 9), (2, 3, 2, 10), (5, 2, 3, 14)])
def test_auto_pad_against_onnx_reference(mode, k, s, d, size):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        auto_pad=mode.upper(),
        strides=[s, s + 1 if s < 3 else s],
        dilations=[d, d],
        kernel_shape=[k, k],
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, size, size + 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    (ref,) = ReferenceEvaluator(model).run(None, {"x": x, "w": w, "b": b})
    stride = (s, s + 1 if s < 3 else s)
    y = ops.conv2d(x, w, b, stride=stride, padding=mode, dilation=d)
    assert y.shape == ref.shape
    pads = resolve_padding(mode, (size, size + 3), (k, k), stride, (d, d))
    tol = auto_tolerance(x, w, b, stride, pads, (d, d), 1)
    # the ONNX reference itself computes in float32: allow its error as well as ours
    assert (np.abs(y - ref) <= 2 * tol).all()


def test_asymmetric_pads_against_onnx_reference():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    pads = (2, 0, 1, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=list(pads), strides=[2, 1], group=2)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    (ref,) = ReferenceEvaluator(model).run(None, {"x": x, "w": w})
    y = ops.conv2d(x, w, stride=(2, 1), padding=pads, groups=2)
    tol = auto_tolerance(x, w, None, (2, 1), pads, (1, 1), 2)
    assert y.shape == ref.shape and (np.abs(y - ref) <= 2 * tol).all()


def _onnx_conv_cases():
    try:
        import onnx
    except ImportError:
        return []
    from pathlib import Path

    root = Path(onnx.__file__).parent / "backend/test/data/pytorch-converted"
    return sorted(p for p in root.glob("test_Conv2d*") if (p / "model.onnx").exists())


@pytest.mark.parametrize("case_dir", _onnx_conv_cases(), ids=lambda p: p.name)
def test_onnx_shipped_pytorch_converted_cases(variant, case_dir):
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(case_dir / "model.onnx")
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = numpy_helper.to_array(onnx.load_tensor(case_dir / "test_data_set_0" / "input_0.pb"))
    expected = numpy_helper.to_array(onnx.load_tensor(case_dir / "test_data_set_0" / "output_0.pb"))
    w = inits[node.input[1]]
    b = inits[node.input[2]] if len(node.input) > 2 else None
    pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
    stride, dil = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
    groups = attrs.get("group", 1)
    y = ops.conv2d(x, w, b, stride=stride, padding=pads, dilation=dil, groups=groups)
    assert y.shape == expected.shape
    # expected was computed by PyTorch in float32: both sides carry a float32 rounding error
    tol = auto_tolerance(x, w, b, stride, pads, dil, groups)
    assert (np.abs(y - expected) <= 2 * tol).all()


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x, w: ops.conv2d(x.astype(np.float64), w), TypeError, "x: expected float32"),
        (lambda x, w: ops.conv2d(x[0], w), ValueError, "x: expected 4 dimensions"),
        (lambda x, w: ops.conv2d(x, w.astype(np.float16)), TypeError, "weight: expected float32"),
        (lambda x, w: ops.conv2d(x, w[0]), ValueError, "weight: expected 4 dimensions"),
        (
            lambda x, w: ops.conv2d(x, w[:, :2]),
            ValueError,
            "x: has 4 channels but weight expects 2",
        ),
        (lambda x, w: ops.conv2d(x, w, groups=3), ValueError, "groups: 3 does not divide"),
        (lambda x, w: ops.conv2d(x, w[:, :2], groups=0), ValueError, "groups: must be positive"),
        (lambda x, w: ops.conv2d(x, w, stride=0), ValueError, "stride: must be positive"),
        (lambda x, w: ops.conv2d(x, w, stride=(1, -2)), ValueError, "stride: must be positive"),
        (lambda x, w: ops.conv2d(x, w, stride=1.5), TypeError, "stride: expected an int"),
        (lambda x, w: ops.conv2d(x, w, dilation=0), ValueError, "dilation: must be positive"),
        (lambda x, w: ops.conv2d(x, w, padding=-1), ValueError, "padding: must be non-negative"),
        (lambda x, w: ops.conv2d(x, w, padding=(1, 2, 3)), ValueError, "padding: expected"),
        (lambda x, w: ops.conv2d(x, w, padding="same"), ValueError, "padding: unknown mode"),
        (lambda x, w: ops.conv2d(x[:, :, :2, :2], w), ValueError, "x: the kernel"),
        (lambda x, w: ops.conv2d(x, w, dilation=4), ValueError, "x: the kernel"),
        (lambda x, w: ops.conv2d(x, w, activation="gelu"), ValueError, "activation:"),
        (lambda x, w: ops.conv2d(x, w, np.zeros(5, np.float32)), ValueError, "bias: expected 6"),
        (
            lambda x, w: ops.conv2d(x, w, np.zeros(6, np.float64)),
            TypeError,
            "bias: expected float32",
        ),
        (
            lambda x, w: ops.conv2d(x, w, out=np.zeros((1, 6, 6, 6), np.float32)),
            ValueError,
            "out: expected shape",
        ),
        (
            lambda x, w: ops.conv2d(x, w, out=np.zeros((1, 6, 6, 7), np.float64)),
            TypeError,
            "out: expected float32",
        ),
        (lambda x, w: ops.conv2d(x, w, out=x), ValueError, "out: expected shape"),
        (lambda x, w: ops.conv2d(x.tolist(), w), TypeError, "x: expected a numpy array"),
        (
            lambda x, w: ops.conv2d(x, np.zeros((6, 4, 17, 17), np.float32)),
            ValueError,
            "weight: kernels of more than 256",
        ),
        (
            lambda x, w: ops.conv2d(x, np.zeros((0, 4, 3, 3), np.float32)),
            ValueError,
            "weight: has an empty",
        ),
    ],
)
def test_bad_arguments(call, exc, match):
    x = np.zeros((1, 4, 8, 9), np.float32)
    w = np.zeros((6, 4, 3, 3), np.float32)
    with pytest.raises(exc, match=match):
        call(x, w)


def test_out_overlapping_x_and_read_only():
    buf = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match="out: overlaps x"):
        ops.conv2d(buf, w, out=buf)
    ro = np.zeros((1, 4, 8, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: array is read-only"):
        ops.conv2d(np.zeros((1, 4, 8, 8), np.float32), w, out=ro)


def test_native_layer_rejects_bad_calls():
    from mmfast import _C

    x = np.zeros((1, 4, 8, 8), np.float32)
    packed = _C.conv2d_pack(np.zeros((4, 4, 3, 3), np.float32), 1, _C.CONV_PANEL_ROWS)
    out = np.zeros((1, 4, 6, 6), np.float32)
    args = dict(
        M=4, KH=3, KW=3, stride=[1, 1], dilation=[1, 1], pads=[0, 0, 0, 0], groups=1, relu=False
    )
    _C.conv2d(x, packed, None, None, out, **args)  # valid
    with pytest.raises(ValueError, match="packed: size does not match"):
        _C.conv2d(x, packed[:-1], None, None, out, **args)
    with pytest.raises(ValueError, match="out: shape does not match"):
        _C.conv2d(x, packed, None, None, out[:, :, :5], **args)
    with pytest.raises(ValueError, match="groups: must divide"):
        _C.conv2d(x, packed, None, None, out, **{**args, "groups": 3})
    with pytest.raises(ValueError, match="padding: must be non-negative"):
        _C.conv2d(x, packed, None, None, out, **{**args, "pads": [0, -1, 0, 0]})
    with pytest.raises(ValueError, match="x: the \\(dilated\\) kernel"):
        _C.conv2d(x, packed, None, None, out, **{**args, "dilation": [5, 5]})


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,match",
    [
        # sizes that overflow 64-bit arithmetic used to size a too-small workspace (heap overflow)
        ((1, 1, 1, 2), (1, 1, 2, 2), {"dilation": (2**61, 1), "padding": (2**61, 0, 0, 0)},
         "workspace is too large"),
        ((1, 1, 1, 2), (1, 1, 3, 3), {"dilation": (2**62, 1), "padding": "same_lower"},
         "overflows a 64-bit integer"),
        ((1, 2, 4, 4), (2, 1, 3, 3), {"dilation": (1, 2**62), "groups": 2,
                                      "padding": (0, 2**62, 0, 2**62)},
         "padding: the padded input's size overflows a 64-bit integer"),
    ],
)  # fmt: skip
def test_sizes_that_overflow_are_refused(x_shape, w_shape, kw, match):
    x, w = np.ones(x_shape, np.float32), np.ones(w_shape, np.float32)
    with pytest.raises(ValueError, match=match):
        ops.conv2d(x, w, **kw)


def test_empty_batch_and_torch_roundtrip():
    y = ops.conv2d(np.zeros((0, 3, 5, 5), np.float32), np.ones((2, 3, 3, 3), np.float32))
    assert y.shape == (0, 2, 3, 3)


@pytest.mark.export
def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 6, 11, 13)[:, ::2]  # non-contiguous
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4)
    y = ops.conv2d(x, w, b, padding="same_lower", activation="relu")
    assert isinstance(y, torch.Tensor) and y.shape == (2, 4, 11, 13)
    ref = torch.relu(
        torch.nn.functional.conv2d(x.double(), w.detach().double(), b.double(), padding=1)
    )
    tol = auto_tolerance(x.numpy(), w.detach().numpy(), b.numpy(), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert (np.abs(y.numpy() - ref.numpy()) <= tol).all()
    out = torch.empty(2, 4, 11, 13)
    assert ops.conv2d(x, w, b, padding=1, out=out) is out


def _guarded_array(shape, guard="after"):
    """A float32 array next to an inaccessible page — after its last byte (guard="after") or
    before its first (guard="before"): reading past that end crashes the test instead of
    passing silently. Returns (array, the mapping to keep alive)."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    count = int(np.prod(shape))
    npages = -(-count * 4 // page) + 1
    buf = mmap.mmap(-1, npages * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    guard_page = (npages - 1) * page if guard == "after" else 0
    assert libc.mprotect(base + guard_page, page, 0) == 0
    offset = (npages - 1) * page - count * 4 if guard == "after" else page
    arr = np.frombuffer(buf, dtype=np.float32, count=count, offset=offset)
    return arr.reshape(shape), buf


@pytest.mark.skipif(not hasattr(__import__("mmap"), "PROT_READ"), reason="needs POSIX mmap")
@pytest.mark.parametrize("c,m,hw", [(3, 5, (10, 10)), (16, 40, (7, 7)), (8, 64, (1, 37))])
def test_one_by_one_reads_nothing_past_the_input(variant, conv_path, c, m, hw):
    # 1x1 stride-1 unpadded convolutions read the caller's array in place (no copy): the last
    # tile must not touch memory past its end.
    x, keep = _guarded_array((1, c, *hw), "after")
    x[...] = np.random.default_rng(7).standard_normal(x.shape)
    w = np.random.default_rng(8).standard_normal((m, c, 1, 1)).astype(np.float32)
    check(x, w, None)
    del keep


def test_native_layer_refuses_non_arrays_for_optional_buffers():
    # A list used to be borrowed as an array (segfault), or converted into a temporary the
    # kernel would still read after it was freed.
    from mmfast import _C

    x = np.zeros((1, 4, 6, 6), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    packed = _C.conv2d_pack(w, 1, _C.CONV_PANEL_ROWS)
    out = np.zeros((1, 4, 4, 4), np.float32)
    args = dict(
        M=4, KH=3, KW=3, stride=[1, 1], dilation=[1, 1], pads=[0, 0, 0, 0], groups=1, relu=False
    )
    with pytest.raises(TypeError, match="bias: expected a numpy array or None, got list"):
        _C.conv2d(x, packed, None, [1.0, 2.0, 3.0, 4.0], out, **args)
    with pytest.raises(TypeError, match="packed_cols: expected a numpy array or None"):
        _C.conv2d(x, packed, [0.0] * 10, None, out, **args)


@pytest.mark.parametrize(
    "n,c,m,hw,k,stride,pad,groups",
    [
        (2, 3, 64, 64, 7, 2, 3, 1),  # the ResNet stem, scaled down: OW = 32, planes 35 wide
        (1, 3, 20, 61, 7, 2, 3, 1),  # OW = 31: last vector of a row masked; Mg = 20: tail panel
        (1, 6, 18, 45, 5, 2, 2, 2),  # two groups, OW = 23 (row tiles with 8-wide vectors)
        (1, 4, 16, 32, 3, 1, 1, 1),  # stride 1: OW = 32, planes 34 wide
    ],
)
def test_row_tiles_match_plane_position_tiles(
    variant, conv_path, n, c, m, hw, k, stride, pad, groups
):
    # Where whole vectors along each output row use more lanes than runs of plane positions,
    # the spatial GEMM runs in row tiles and stores to y directly; that needs rows of y with
    # unit stride, so an `out` strided along w takes the plane-position tiles. Both sum the
    # same products in the same order: the results must be identical, and within the bound.
    rng = np.random.default_rng(n * 1000 + m)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((m, c // groups, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    y = check(x, w, b, (stride, stride), (pad,) * 4, (1, 1), groups, relu=True)
    conv = ops.Conv2d(w, b, stride=stride, padding=pad, groups=groups, activation="relu")
    oh, ow = y.shape[2:]
    wide = np.full((n, m, oh, ow + 5), np.nan, np.float32)  # rows of y 5 floats apart
    conv(x, out=wide[..., :ow])
    np.testing.assert_array_equal(wide[..., :ow], y)
    assert np.isnan(wide[..., ow:]).all()  # nothing written past the rows
    strided_w = np.full((n, m, ow, oh), np.nan, np.float32).transpose(0, 1, 3, 2)
    conv(x, out=strided_w)
    np.testing.assert_array_equal(strided_w, y)


@pytest.mark.parametrize(
    "c,m,hw,k,stride,pads,dilation,groups",
    [
        (5, 9, (7, 31), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # both column phases
        (4, 16, (9, 32), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # 1x1/2: phase (0, 0) only
        (3, 8, (5, 33), (1, 2), (2, 2), (0, 3, 0, 2), (1, 1), 1),  # pad_left 3: window at -3
        (2, 10, (6, 65), (3, 3), (3, 2), (2, 0, 1, 1), (1, 1), 1),  # row stride 3, odd width
        (6, 12, (5, 47), (3, 3), (2, 2), (1, 1, 1, 1), (1, 2), 2),  # dilation 2: b = 0 only
        (3, 3, (8, 40), (3, 4), (2, 2), (1, 2, 1, 1), (1, 1), 3),  # depthwise, stride 2
        (2, 4, (3, 1), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),  # one column
        (2, 4, (3, 2), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # plane rows of 2
    ],
)
def test_stride_two_fill_same_planes_as_gather(
    variant, conv_path, c, m, hw, k, stride, pads, dilation, groups
):
    # Column stride 2 along contiguous rows fills the planes in masked vectors; an x strided
    # along w takes the scalar gather. Both fill the same planes: identical outputs, within the
    # bound; rows of x apart in memory (a slice of wider rows) take the vector fill too.
    rng = np.random.default_rng(sum(hw) * 100 + m)
    x = rng.standard_normal((1, c, *hw)).astype(np.float32)
    w = rng.standard_normal((m, c // groups, *k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    y = check(x, w, b, stride, pads, dilation, groups, relu=True)
    kwargs = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)
    conv = ops.Conv2d(w, b, activation="relu", algorithm="direct", **kwargs)
    np.testing.assert_array_equal(conv(x), y)
    gather = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # w stride H
    np.testing.assert_array_equal(conv(gather), y)
    wide = np.full((1, c, hw[0], hw[1] + 7), np.inf, np.float32)
    wide[..., : hw[1]] = x
    np.testing.assert_array_equal(conv(wide[..., : hw[1]]), y)


def test_stride_two_fill_very_wide_rows(variant):
    # Plane rows past the vector fill's mask table (1024 columns) take the scalar gather.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 3, 2103)).astype(np.float32)
    w = rng.standard_normal((8, 2, 1, 3)).astype(np.float32)
    check(x, w, None, stride=(2, 2), pads=(0, 1, 0, 1))


@pytest.mark.skipif(not hasattr(__import__("mmap"), "PROT_READ"), reason="needs POSIX mmap")
@pytest.mark.parametrize(
    "side,c,hw,k,pad",
    [
        # past the end: stride-2 rows are deinterleaved two vectors at a time, and the last
        # loads of the last row must stay inside the input
        ("after", 3, (20, 64), 7, 3),
        ("after", 2, (9, 35), 7, 3),
        ("after", 3, (6, 33), 3, 0),
        ("after", 1, (4, 48), 1, 0),
        # before the start: the fill's windows start left of a padded row, lanes masked off
        ("before", 3, (12, 64), 7, 3),
        ("before", 2, (5, 33), 3, 1),
        ("before", 2, (4, 17), 1, 0),
    ],
)
def test_stride_two_planes_read_nothing_outside_the_input(variant, conv_path, side, c, hw, k, pad):
    # the input sits against a guard page on that side: a read across it faults
    x, keep = _guarded_array((1, c, *hw), side)
    x[...] = np.random.default_rng(9 if side == "after" else 12).standard_normal(x.shape)
    w = np.random.default_rng(10).standard_normal((16, c, k, k)).astype(np.float32)
    check(x, w, None, stride=(2, 2), pads=(pad,) * 4)
    del keep
