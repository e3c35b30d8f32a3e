"""Fuzzing with hypothesis: the native ops over generated arguments (valid and broken), each
result checked against its float64 reference within the derived float32 rounding bound
(tests/conv_reference.py, test_attention.reference, test_softmax.check_softmax), every refusal a
TypeError / ValueError naming an argument. A crash kills the run, a hang trips the watchdog (a
traceback of every thread, then exit), any other exception fails the example.

CI runs a few hundred inputs per target (~20 s). The long run (>= 10^5 inputs over the targets):

    make fuzz     # MMFAST_FUZZ_EXAMPLES=15000 over tests/test_fuzz.py and test_fuzz_inputs.py

Targets for the bundle manifest, preprocessing and index files live with their modules' tests
(tests/test_fuzz_inputs.py) and take the same variable.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from conv_reference import auto_tolerance, conv2d_ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_attention import check as check_close
from test_attention import reference as attention_ref
from test_reliability import misaligned
from test_softmax import check_softmax

from mmfast import _C, ops

EXAMPLES = int(os.environ.get("MMFAST_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing is the watchdog's business, not hypothesis's (noisy machines)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 1000,  # CI: a fixed, reproducible sample; long runs explore
)
REFUSALS = (TypeError, ValueError)
HANG_S = 120  # one example far past any honest op time: a hang


@contextmanager
def watchdog() -> Iterator[None]:
    """A hang dumps every thread's traceback and ends the process (a failure CI sees)."""
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def layout(a: np.ndarray, how: str) -> np.ndarray:
    """The same values in another memory layout: C order, a transposed copy viewed back, a
    strided slice of a larger buffer, or an unaligned buffer."""
    if how == "transposed":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros((*a.shape[:-1], 2 * a.shape[-1] + 1), a.dtype)
        view = big[..., 1::2]
        view[...] = a
        return view
    if how == "unaligned" and a.size:
        return misaligned(a)
    return a


LAYOUTS = st.sampled_from(["c", "transposed", "strided", "unaligned"])
VARIANT = st.sampled_from(_C.runnable_variants())


@contextmanager
def on_variant(name: str, conv_path: str = "auto") -> Iterator[None]:
    active = _C.active_variant()
    _C.set_variant(name)
    _C._set_conv_path(conv_path)
    try:
        yield
    finally:
        _C.set_variant(active)
        _C._set_conv_path("auto")


# ---- conv2d --------------------------------------------------------------------------------------
@st.composite
def conv_args(draw: Any) -> dict[str, Any]:
    groups = draw(st.integers(1, 4))
    cg, mg = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    a: dict[str, Any] = {
        "n": draw(st.integers(0, 3)),
        "c": groups * cg,
        "m": groups * mg,
        "hw": (draw(st.integers(0, 13)), draw(st.integers(0, 13))),
        "k": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "dilation": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "groups": groups,
        "padding": draw(
            st.one_of(
                st.integers(0, 3),
                st.tuples(*[st.integers(0, 3)] * 4),
                st.sampled_from(["valid", "same_upper", "same_lower"]),
            )
        ),
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "x_layout": draw(LAYOUTS),
        "out": draw(st.sampled_from([None, "c", "strided", "unaligned"])),
        "variant": draw(VARIANT),
        "path": draw(st.sampled_from(["auto", "spatial", "channel"])),
        "prepacked": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
        # one broken argument, sometimes
        "break": draw(
            st.sampled_from(
                [None] * 6
                + ["x_dtype", "x_ndim", "stride", "dilation", "padding", "groups", "bias", "out"]
                + ["huge_dilation", "huge_padding"]
            )
        ),
    }
    return a


def _pads(a: dict[str, Any], w: np.ndarray) -> tuple[int, int, int, int]:
    from mmfast.ops._conv2d import resolve_padding

    return resolve_padding(a["padding"], a["hw"], w.shape[2:], a["stride"], a["dilation"])


@FUZZ
@given(conv_args())
def test_fuzz_conv2d(a: dict[str, Any]) -> None:
    rng = np.random.default_rng(a["seed"])
    x = rng.standard_normal((a["n"], a["c"], *a["hw"])).astype(np.float32)
    w = rng.standard_normal((a["m"], a["c"] // a["groups"], *a["k"])).astype(np.float32)
    b = rng.standard_normal(a["m"]).astype(np.float32) if a["bias"] else None
    kw: dict[str, Any] = {
        "stride": a["stride"],
        "padding": a["padding"],
        "dilation": a["dilation"],
        "groups": a["groups"],
        "activation": "relu" if a["relu"] else None,
    }
    broken = a["break"]
    xin = layout(x, a["x_layout"])
    if broken == "x_dtype":
        xin = x.astype(np.float64)
    elif broken == "x_ndim":
        xin = np.zeros(x.shape[1:], np.float32)
    elif broken == "stride":
        kw["stride"] = (0, 1)
    elif broken == "dilation":
        kw["dilation"] = -1
    elif broken == "padding":
        kw["padding"] = (1, -2, 0, 0)
    elif broken == "groups":
        kw["groups"] = a["groups"] + 1 if a["c"] % (a["groups"] + 1) else 0
    elif broken == "bias":
        b = np.zeros(a["m"] + 1, np.float32)
    elif broken == "huge_dilation":  # the reproducers: past int64 arithmetic
        kw["dilation"] = (2 ** int(a["seed"] % 3 + 60), 1)
        kw["padding"] = (2**61, 0, 0, 0) if a["seed"] % 2 else "same_lower"
    elif broken == "huge_padding":  # an output too large to exist (never one merely huge:
        kw["padding"] = (0, 2**62, 0, 2**62)  # overcommit would grant it and the kernel fill it)
    pads = _pads(a, w)
    oh = a["hw"][0] + pads[0] + pads[2] - a["dilation"][0] * (a["k"][0] - 1) - 1
    ow = a["hw"][1] + pads[1] + pads[3] - a["dilation"][1] * (a["k"][1] - 1) - 1
    empty = oh < 0 or ow < 0
    oshape = (a["n"], a["m"], oh // a["stride"][0] + 1, ow // a["stride"][1] + 1)
    out = None
    if broken == "out" and (not a["out"] or empty):
        broken = None  # nothing to break: the call makes its own output
    if a["out"] and not empty:
        out = layout(np.full(oshape, np.nan, np.float32), a["out"])
        if broken == "out":
            out = np.zeros((*oshape[:-1], oshape[-1] + 1), np.float32)
    with watchdog(), on_variant(a["variant"], a["path"]):
        try:
            if a["prepacked"]:
                y = ops.Conv2d(w, b, **kw)(xin, out=out)
            else:
                y = ops.conv2d(xin, w, b, out=out, **kw)
        except (*REFUSALS, MemoryError) as e:
            assert broken or empty, f"a valid call was refused: {e}"
            assert ":" in str(e), f"the message names no argument: {e}"
            return
    if broken in ("huge_dilation", "huge_padding"):
        return  # a huge but representable size may be legal (the dilated taps fall outside)
    assert broken is None and not empty, "a broken call was accepted"
    ref = conv2d_ref(x, w, b, a["stride"], pads, a["dilation"], a["groups"])
    tol = auto_tolerance(x, w, b, a["stride"], pads, a["dilation"], a["groups"])
    if a["relu"]:
        ref = np.maximum(ref, 0)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert (np.abs(y - ref) <= tol).all(), "conv2d outside its float64 bound"
    if out is not None:
        np.testing.assert_array_equal(out, y)


# ---- attention -----------------------------------------------------------------------------------
@st.composite
def attention_args(draw: Any) -> dict[str, Any]:
    hkv = draw(st.integers(1, 3))
    mask_shape = draw(st.sampled_from([None, "lk", "lqlk", "full", "b1lqlk"]))
    return {
        "b": draw(st.integers(0, 2)),
        "hkv": hkv,
        "hq": hkv * draw(st.integers(1, 3)),
        "lq": draw(st.integers(0, 21)),
        "lk": draw(st.integers(0, 40)),
        "d": draw(st.integers(1, 40)),
        "dv": draw(st.integers(1, 40)),
        "causal": draw(st.booleans()),
        "align": draw(st.sampled_from(["top_left", "bottom_right"])),
        "mask": mask_shape,
        "mask_kind": draw(st.sampled_from(["bool", "float"])),
        "scale": draw(st.one_of(st.none(), st.floats(-2, 2, allow_nan=False))),
        "softcap": draw(st.sampled_from([0.0, 0.0, 0.5, 5.0, 50.0])),
        "value_scale": draw(st.sampled_from([1.0, 1.0, 8.0])),
        "layouts": draw(st.tuples(LAYOUTS, LAYOUTS, LAYOUTS)),
        "out": draw(st.sampled_from([None, "c", "strided", "unaligned"])),
        "variant": draw(VARIANT),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "break": draw(
            st.sampled_from(
                [None] * 6 + ["q_dtype", "heads", "head_dim", "mask", "softcap", "scale", "out"]
            )
        ),
    }


@FUZZ
@given(attention_args())
def test_fuzz_attention(a: dict[str, Any]) -> None:
    rng = np.random.default_rng(a["seed"])
    s = a["value_scale"]
    q = (rng.standard_normal((a["b"], a["hq"], a["lq"], a["d"])) * s).astype(np.float32)
    k = (rng.standard_normal((a["b"], a["hkv"], a["lk"], a["d"])) * s).astype(np.float32)
    v = rng.standard_normal((a["b"], a["hkv"], a["lk"], a["dv"])).astype(np.float32)
    mask = None
    if a["mask"]:
        shape = {
            "lk": (a["lk"],),
            "lqlk": (a["lq"], a["lk"]),
            "full": (a["b"], a["hq"], a["lq"], a["lk"]),
            "b1lqlk": (a["b"], 1, a["lq"], a["lk"]),
        }[a["mask"]]
        if a["mask_kind"] == "bool":
            mask = rng.random(shape) > 0.3
        else:
            mask = np.where(rng.random(shape) > 0.2, rng.standard_normal(shape), -np.inf)
            mask = mask.astype(np.float32)
    kw: dict[str, Any] = {
        "attn_mask": mask,
        "is_causal": a["causal"],
        "causal_align": a["align"],
        "scale": a["scale"],
        "softcap": a["softcap"],
    }
    broken = a["break"]
    qin, kin, vin = (layout(t, h) for t, h in zip((q, k, v), a["layouts"], strict=True))
    if broken == "q_dtype":
        qin = q.astype(np.float16)
    elif broken == "heads":
        kin = np.zeros((a["b"], a["hq"] + 1, a["lk"], a["d"]), np.float32)
    elif broken == "head_dim":
        vin = np.zeros((a["b"], a["hkv"], a["lk"], _C.ATTENTION_MAX_HEAD_DIM + 1), np.float32)
    elif broken == "mask":
        kw["attn_mask"] = np.ones((a["lq"] + 2, a["lk"] + 3), bool)
    elif broken == "softcap":
        kw["softcap"] = -1.0
    elif broken == "scale":
        kw["scale"] = float("nan")
    oshape = (a["b"], a["hq"], a["lq"], a["dv"])
    out = layout(np.full(oshape, np.nan, np.float32), a["out"]) if a["out"] else None
    if broken == "out":
        out = np.zeros((*oshape[:-1], a["dv"] + 1), np.float32)
    with watchdog(), on_variant(a["variant"]):
        try:
            got, lse = ops.attention(qin, kin, vin, out=out, return_lse=True, **kw)
        except REFUSALS as e:
            assert broken, f"a valid call was refused: {e}"
            assert ":" in str(e), f"the message names no argument: {e}"
            return
    assert broken is None, "a broken call was accepted"
    assert got.shape == oshape and lse.shape == oshape[:3]
    if a["lk"] == 0 or got.size == 0:  # no key at all: zeros and the "no key" marker
        assert (got == 0).all() and (lse == -np.inf).all()
        return
    ref, ref_lse, bound, lse_bound = attention_ref(
        q, k, v, mask, a["causal"], a["align"], a["scale"], a["softcap"]
    )
    check_close(got, ref, bound)
    dead = ref_lse == -np.inf
    assert (got[dead] == 0).all() and (lse[dead] == -np.inf).all()
    check_close(lse[~dead], ref_lse[~dead], lse_bound[~dead], "lse")
    if out is not None:
        np.testing.assert_array_equal(out, got)


# ---- softmax -------------------------------------------------------------------------------------
@FUZZ
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    axis_pick=st.integers(0, 2),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    how=LAYOUTS,
    in_place=st.booleans(),
    variant=VARIANT,
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_softmax(
    shape: list[int],
    axis_pick: int,
    scale: float,
    how: str,
    in_place: bool,
    variant: str,
    seed: int,
) -> None:
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    axis = axis_pick % len(shape) - len(shape) * (axis_pick % 2)  # negative axes too
    with watchdog(), on_variant(variant):
        check_softmax(layout(x, how), variant, axis=axis)
        if in_place:
            y = x.copy()
            ops.softmax(y, axis=axis, out=y)
            np.testing.assert_array_equal(y, ops.softmax(x, axis=axis))
