"""Kernel groups for pytest-benchmark: conv2d and attention, mmfast against its peers.

    pytest benchmarks/test_kernels.py --benchmark-only [--threads 1]

One benchmark group per shape; in each, every implementation runs on the same inputs:
- conv2d, bench_conv.py's shapes at batch 1 and 8 (group "conv <shape> N=<n>"): mmfast's
  prepacked ops.Conv2d into a preallocated output (algorithm "auto"; on the 3x3 layers, where
  that is Winograd, also "mmfast-direct", the direct kernel), ONNX Runtime's one-node Conv
  model with IO binding (bench_conv.ort_session), torch F.conv2d (oneDNN);
- attention, B=1, H=8, fp32, L 1024/4096, D 64/128, causal or not (group "attention D=.. L=..
  [causal]"): bench_attention.make_runner's mmfast ops.attention, ONNX Runtime
  com.microsoft.MultiHeadAttention and torch SDPA.
Before and after timing, each implementation's output is checked against a float64 reference
within a float32 rounding bound (the bounds of mmfast._kernel_check, i.e. of `mmfast bench`),
so a fast wrong kernel fails instead of winning. extra_info records GFLOP, GFLOP/s and the
worst err/bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bench_attention
import bench_conv
import numpy as np
import onnxruntime as ort
import pytest
import torch
from _common import CONV_SHAPES

from mmfast import ops
from mmfast.ops._conv2d import choose_algorithm, winograd_applies
from mmfast.ops._winograd_bound import winograd_error_bound

EPS = float(np.finfo(np.float32).eps)
F = torch.nn.functional

CONV_BATCHES = (1, 8)
CONV_IMPLS = ("mmfast", "mmfast-direct", "onnxruntime", "torch")
ATT_SHAPES = [(d, length, c) for d in (64, 128) for length in (1024, 4096) for c in (False, True)]
ATT_IMPLS = ("mmfast", "ort_mha", "sdpa")  # bench_attention's names (naive is left out: 1 GiB)


def check(got: np.ndarray, ref: np.ndarray, bound: np.ndarray, what: str) -> float:
    """Assert |got - ref| <= bound everywhere; return the worst err/bound."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, want {ref.shape}"
    ratio = np.abs(got.astype(np.float64) - ref) / (bound + 1e-300)
    worst = float(ratio.max())
    assert np.isfinite(got).all() and worst <= 1.0, (
        f"{what}: outside the float32 bound of the float64 reference: worst err/bound {worst:.3g}"
    )
    return worst


def settle() -> None:
    """Let the previous benchmark's pool threads (ORT's spin, torch's) go idle first."""
    time.sleep(0.1)


def record(benchmark: Any, gflop: float, worst: float, **info: Any) -> None:
    benchmark.extra_info.update(info, gflop=round(gflop, 4), worst_err_over_bound=worst)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["gflops_median"] = round(gflop / stats.stats.median, 1)


class LastOnly:
    """Builds a case's inputs and float64 reference once for all its implementations, and
    drops it when the next case starts (the parametrisation keeps a case's tests together)."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build, self.key, self.value = build, None, None

    def __call__(self, *key: Any) -> Any:
        if key != self.key:
            self.key, self.value = None, None  # free the old case before building the new one
            self.value, self.key = self.build(*key), key
        return self.value


# ------------------------------------------------------------------------------ conv2d


@dataclass
class ConvCase:
    spec: tuple  # (name, C, M, H=W, k, stride, pad, groups): _common.CONV_SHAPES
    x: np.ndarray  # (N, C, H, W) float32
    w: np.ndarray  # (M, C/g, k, k)
    b: np.ndarray  # (M,)
    ref: np.ndarray  # (N, M, Ho, Wo) float64
    bound: np.ndarray  # same shape: |err| of a float32 direct conv may reach this
    gflop: float
    bound_winograd: np.ndarray | None  # Winograd F(2x2, 3x3)'s bound, where it applies


def _conv_case(spec: tuple, n: int) -> ConvCase:
    _, c, m, hw, k, s, p, g = spec
    rng = np.random.default_rng([n, *spec[1:]])
    # bench_conv.bench_shape's weights, bias and input
    w = (rng.standard_normal((m, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    t64 = [torch.from_numpy(a).double() for a in (x, w, b)]
    ref = F.conv2d(*t64, stride=s, padding=p, groups=g)
    mag = F.conv2d(*(t.abs() for t in t64), stride=s, padding=p, groups=g)
    kk = c // g * k * k
    bound = (kk + 2) * EPS * mag  # a length-K float32 dot product plus the bias (Higham)
    gflop = 2 * ref.numel() * kk / 1e9
    wino = None
    if winograd_applies((k, k), (s, s), (1, 1), g):
        wino = winograd_error_bound(x, w, b, (p, p, p, p))
    return ConvCase(spec, x, w, b, ref.numpy(), bound.numpy(), gflop, wino)


conv_case = LastOnly(_conv_case)


def _conv_runner(impl: str, case: ConvCase, threads: int) -> tuple[Callable[[], Any], Callable]:
    """(the timed call, a function returning its latest output as numpy)."""
    _, _, _, _, k, s, p, g = case.spec
    if impl in ("mmfast", "mmfast-direct"):
        algorithm = "direct" if impl == "mmfast-direct" else "auto"
        conv = ops.Conv2d(case.w, case.b, stride=s, padding=p, groups=g, algorithm=algorithm)
        out = np.empty(conv.output_shape(case.x.shape), np.float32)
        return (lambda: conv(case.x, out=out)), (lambda _: out)
    if impl == "onnxruntime":  # bench_conv's session and IO binding
        sess = bench_conv.ort_session(case.w, case.b, k, s, p, g, threads)
        binding = sess.io_binding()
        x_ort = ort.OrtValue.ortvalue_from_numpy(case.x)
        y_ort = ort.OrtValue.ortvalue_from_shape_and_type(case.ref.shape, np.float32)
        binding.bind_ortvalue_input("x", x_ort)
        binding.bind_ortvalue_output("y", y_ort)
        return (lambda: sess.run_with_iobinding(binding)), (lambda _: y_ort.numpy())
    tx, tw, tb = (torch.from_numpy(a) for a in (case.x, case.w, case.b))
    return (lambda: F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)), lambda last: last.numpy()


def _auto_algorithm(spec: tuple) -> str:
    _, c, m, _, k, s, _, g = spec
    return choose_algorithm("auto", (k, k), (s, s), (1, 1), g, (c, m))


# mmfast runs its default algorithm; where that is not the direct kernel (Winograd on the 3x3
# layers), "mmfast-direct" times the direct kernel in the same group as well.
CONV_PARAMS = [
    pytest.param(spec, n, impl, id=f"{spec[0].replace(' ', '_')}-N{n}-{impl}")
    for spec in CONV_SHAPES
    for n in CONV_BATCHES
    for impl in CONV_IMPLS
    if impl != "mmfast-direct" or _auto_algorithm(spec) != "direct"
]


@pytest.mark.parametrize(("spec", "n", "impl"), CONV_PARAMS)
def test_conv2d(benchmark: Any, threads: int, spec: tuple, n: int, impl: str) -> None:
    case = conv_case(spec, n)
    benchmark.group = f"conv {spec[0]} N={n} threads={threads}"
    run, output = _conv_runner(impl, case, threads)
    what = f"{impl} conv {spec[0]} N={n}"
    bound = case.bound
    if impl == "mmfast" and _auto_algorithm(spec) == "winograd":
        assert case.bound_winograd is not None
        bound = case.bound_winograd
    worst = check(output(run()), case.ref, bound, what)
    settle()
    last = benchmark(run)
    worst = max(worst, check(output(last), case.ref, bound, what + " (after timing)"))
    record(benchmark, case.gflop, worst, impl=impl, threads=threads, shape=spec[0], batch=n)


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionCase:
    ref: np.ndarray  # (B, H, L, D) float64
    bound: np.ndarray  # same shape
    gflop: float


def _attention_case(L: int, D: int, causal: bool) -> AttentionCase:
    """float64 reference and bound of bench_attention.make_inputs(L, D), in blocks of queries
    (the full (B, H, L, L) scores at L = 4096 would be 1 GiB). Bound as mmfast._kernel_check's:
    a score moves by <= D·eps·scale·|q|·|k|, which moves p by twice that relatively; plus the
    length-L sums and the final rounding."""
    q, k, v = (t.double() for t in bench_attention.make_inputs(L, D))  # (B, H, L, D) each
    scale = 1 / D**0.5
    ref, bound = torch.empty_like(q), torch.empty_like(q)
    blk = 256
    for i0 in range(0, L, blk):
        qb = q[:, :, i0 : i0 + blk]  # (B, H, b, D)
        s = qb @ k.transpose(-1, -2) * scale  # (B, H, b, L)
        mag = qb.abs() @ k.abs().transpose(-1, -2)  # (B, H, b, L)
        if causal:  # top-left: query i sees keys j <= i
            rows = torch.arange(i0, i0 + qb.shape[2])[:, None]
            hidden = torch.arange(L)[None, :] > rows  # (b, L)
            s = s.masked_fill(hidden, float("-inf"))
            mag = mag.masked_fill(hidden, 0.0)
        p = torch.softmax(s, dim=-1)
        out = p @ v
        ds = D * EPS * scale * mag.amax(-1, keepdim=True)  # (B, H, b, 1)
        pv = p @ v.abs()
        ref[:, :, i0 : i0 + blk] = out
        bound[:, :, i0 : i0 + blk] = (2 * ds + (L + 8) * EPS) * pv + EPS * out.abs()
    gflop = bench_attention.flops(L, D, causal) / 1e9
    return AttentionCase(ref.numpy(), bound.numpy(), gflop)


attention_case = LastOnly(_attention_case)


def _as_bhld(out: Any, L: int, D: int) -> np.ndarray:
    """Any implementation's output as (B, H, L, D) numpy: ORT's MHA gives (B, L, H·D)."""
    a = np.asarray(out)
    if a.ndim == 3:
        a = a.reshape(bench_attention.B, L, bench_attention.H, D).transpose(0, 2, 1, 3)
    return a


ATT_PARAMS = [
    pytest.param(d, length, c, impl, id=f"D{d}-L{length}-{'causal' if c else 'full'}-{impl}")
    for d, length, c in ATT_SHAPES
    for impl in ATT_IMPLS
]


@pytest.mark.parametrize(("D", "L", "causal", "impl"), ATT_PARAMS)
def test_attention(benchmark: Any, threads: int, D: int, L: int, causal: bool, impl: str) -> None:
    case = attention_case(L, D, causal)
    benchmark.group = f"attention D={D} L={L}{' causal' if causal else ''} threads={threads}"
    run = bench_attention.make_runner(impl, L, D, causal, threads)  # same inputs for each impl
    what = f"{impl} attention D={D} L={L} causal={causal}"
    worst = check(_as_bhld(run(), L, D), case.ref, case.bound, what)
    settle()
    last = benchmark(run)
    worst = max(worst, check(_as_bhld(last, L, D), case.ref, case.bound, what + " (after)"))
    record(benchmark, case.gflop, worst, impl=impl, threads=threads, L=L, D=D, causal=causal)
