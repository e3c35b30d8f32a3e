"""This checkout's mmfast.ops against another build of mmfast, in one process: bit-for-bit
outputs on every kernel variant, then interleaved timings. For refactors and tuning that must
not change results ("no behaviour change") and for before/after speed in the same run.

    python benchmarks/ab_builds.py --baseline /tmp/ab/mmfast_base [--threads 1] [--repeats 25]
    taskset -c 1 python benchmarks/ab_builds.py --baseline ... --threads 1   # the quiet figure

The baseline is a copy of another build's `mmfast/` package directory (its Python files and its
built `_C*.so`) under any other name, importable from its parent directory; it uses relative
imports only, so both builds load side by side, each with its own thread pool. Making one from
the commit before a change (with `make build` done there, in a worktree or before you edit):

    mkdir -p /tmp/ab && git archive REV mmfast | tar -x -C /tmp/ab
    mv /tmp/ab/mmfast /tmp/ab/mmfast_base
    cp .venv/lib/python3*/site-packages/mmfast/_C*.so /tmp/ab/mmfast_base/   # REV's build

Timing: the two builds run in turn within every repeat (shared-machine noise hits both alike),
each call into a preallocated output; reported are the medians and after/before = this build's
time over the baseline's (< 1: faster). Shapes: bench_conv.py's (batch 1) and
bench_attention.py's L = 1024 rows (B=1, H=8), plus a decode step and two small softmax calls
(per-call overhead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

import mmfast

sys.path.insert(0, os.path.dirname(__file__))
from _common import CONV_SHAPES


def load_baseline(path: str) -> ModuleType:
    parent, name = os.path.split(os.path.abspath(path.rstrip("/")))
    if name == "mmfast":
        raise SystemExit("--baseline: rename the copied package (it would shadow this mmfast)")
    sys.path.insert(0, parent)
    return importlib.import_module(name)


# ---- bit-for-bit cases: (name, fn(ops) -> outputs) ------------------------------------------
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def conv_cases() -> list[tuple[str, Callable[[Any], list[np.ndarray]]]]:
    cases = []
    specs = [  # (N, C, M, H, W, k, stride, padding, dilation, groups, relu, strided input)
        (1, 64, 64, 56, 56, 3, 1, 1, 1, 1, False, False),
        (2, 128, 128, 14, 14, 3, 1, 1, 1, 1, True, False),
        (3, 256, 64, 7, 9, 3, 2, "same_upper", 1, 1, False, True),
        (1, 3, 64, 37, 41, 7, 2, 3, 1, 1, True, False),
        (2, 32, 32, 29, 30, 3, 1, 1, 1, 32, True, False),
        (1, 24, 48, 17, 17, 3, 1, (0, 1, 2, 1), 2, 3, False, True),
        (5, 64, 256, 8, 8, 1, 1, 0, 1, 1, False, False),
        (9, 512, 512, 7, 7, 3, 1, 1, 1, 1, False, False),
        (2, 16, 20, 10, 10, 5, 3, "same_lower", (2, 1), 4, True, False),
    ]
    for i, (n, c, m, h, w, k, s, p, d, g, relu, strided) in enumerate(specs):

        def run(ops: Any, spec=(n, c, m, h, w, k, s, p, d, g, relu, strided), seed=i) -> list:
            n, c, m, h, w, k, s, p, d, g, relu, strided = spec
            rng = _rng(seed)
            x = rng.standard_normal((n, c, h, w * (2 if strided else 1))).astype(np.float32)
            x = x[..., ::2] if strided else x
            wt = rng.standard_normal((m, c // g, k, k)).astype(np.float32)
            b = rng.standard_normal(m).astype(np.float32)
            act = "relu" if relu else None
            conv = ops.Conv2d(wt, b, stride=s, padding=p, dilation=d, groups=g, activation=act)
            return [conv(x), ops.conv2d(x, wt, None, stride=s, padding=p, dilation=d, groups=g)]

        cases.append((f"conv2d case {i}", run))
    return cases


def attention_cases() -> list[tuple[str, Callable[[Any], list[np.ndarray]]]]:
    specs = [  # (B, Hq, Hkv, Lq, Lk, D, Dv, causal, align, mask, softcap, scale)
        (1, 8, 8, 1024, 1024, 64, 64, False, "top_left", None, 0.0, None),
        (1, 8, 8, 1024, 1024, 128, 128, True, "top_left", None, 0.0, None),
        (2, 6, 2, 97, 1025, 59, 40, False, "top_left", "bool", 0.0, None),
        (1, 4, 1, 3, 300, 80, 80, True, "bottom_right", None, 30.0, 0.2),
        (2, 4, 4, 70, 50, 32, 32, True, "bottom_right", "float", 0.0, -0.5),
        (1, 2, 2, 130, 0, 16, 16, False, "top_left", None, 0.0, None),
    ]
    cases = []
    for i, spec in enumerate(specs):

        def run(ops: Any, spec=spec, seed=100 + i) -> list:
            b, hq, hkv, lq, lk, d, dv, causal, align, mask, cap, scale = spec
            rng = _rng(seed)
            q = rng.standard_normal((b, hq, lq, d)).astype(np.float32)
            k = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
            v = rng.standard_normal((b, hkv, lk, dv)).astype(np.float32)
            m = None
            if mask == "bool":
                m = rng.random((lq, lk)) > 0.3
            elif mask == "float":
                m = rng.standard_normal((b, 1, lq, lk)).astype(np.float32)
            out, lse = ops.attention(
                q, k, v, attn_mask=m, is_causal=causal, causal_align=align, softcap=cap,
                scale=scale, return_lse=True,
            )  # fmt: skip
            return [out, lse]

        cases.append((f"attention case {i}", run))
    return cases


def softmax_cases() -> list[tuple[str, Callable[[Any], list[np.ndarray]]]]:
    def run(ops: Any) -> list:
        x = (_rng(7).standard_normal((64, 4099)) * 8).astype(np.float32)
        return [ops.softmax(x), ops.log_softmax(x), ops.softmax(x.T.copy(), axis=0)]

    return [("softmax", run)]


def check_identical(new: ModuleType, old: ModuleType) -> bool:
    variants = [v for v in new._C.runnable_variants() if v in old._C.runnable_variants()]
    ok = True
    cases = conv_cases() + attention_cases() + softmax_cases()
    for variant in variants:
        new._C.set_variant(variant)
        old._C.set_variant(variant)
        same = 0
        for name, run in cases:
            a, b = run(new.ops), run(old.ops)
            if all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
                same += 1
            else:
                ok = False
                print(f"  {variant}: {name}: outputs DIFFER")
        print(f"  {variant}: {same}/{len(cases)} cases bit-for-bit identical")
    new._C.set_variant(new._C.runnable_variants()[0])
    old._C.set_variant(old._C.runnable_variants()[0])
    return ok


# ---- timing ----------------------------------------------------------------------------------
def interleaved(
    fa: Callable[[], object], fb: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median ms of fa and fb, timed in turn within each repeat (each over enough calls)."""
    fa(), fb()
    t0 = time.perf_counter()
    fa()
    inner = max(1, int(0.3 / repeats / max(time.perf_counter() - t0, 1e-7)))
    ta, tb = [], []
    for r in range(repeats):
        # The order alternates (ABBA...): whichever runs second finds the shared inputs warm.
        pair = ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta))
        for f, ts in pair:
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def timing_rows(new: ModuleType, old: ModuleType, repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    rng = _rng(0)
    for name, c, m, hw, k, s, p, g in CONV_SHAPES:
        w = (rng.standard_normal((m, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        cn = new.ops.Conv2d(w, b, stride=s, padding=p, groups=g)
        co = old.ops.Conv2d(w, b, stride=s, padding=p, groups=g)
        yn, yo = (np.empty(cn.output_shape(x.shape), np.float32) for _ in range(2))
        tn, to = interleaved(lambda: cn(x, out=yn), lambda: co(x, out=yo), repeats)
        rows.append((f"conv {name} N=1", tn, to))
    for d, causal, lq in [(64, False, 1024), (128, False, 1024), (64, True, 1024), (128, True, 1)]:
        q = rng.standard_normal((1, 8, lq, d)).astype(np.float32)
        kk, vv = (rng.standard_normal((1, 8, 1024, d)).astype(np.float32) for _ in range(2))
        on, oo = (np.empty((1, 8, lq, d), np.float32) for _ in range(2))
        align = "bottom_right" if lq == 1 else "top_left"
        kw = dict(is_causal=causal, causal_align=align)
        tn, to = interleaved(
            lambda q=q, kk=kk, vv=vv, on=on, kw=kw: new.ops.attention(q, kk, vv, out=on, **kw),
            lambda q=q, kk=kk, vv=vv, oo=oo, kw=kw: old.ops.attention(q, kk, vv, out=oo, **kw),
            repeats,
        )
        what = "decode step" if lq == 1 else f"L=1024{' causal' if causal else ''}"
        rows.append((f"attention D={d} {what}", tn, to))
    # Small calls, where the Python checks and the binding are most of the time.
    for shape in [(4, 64), (64, 1024)]:
        x = rng.standard_normal(shape).astype(np.float32)
        on, oo = np.empty_like(x), np.empty_like(x)
        tn, to = interleaved(
            lambda x=x, on=on: new.ops.softmax(x, out=on),
            lambda x=x, oo=oo: old.ops.softmax(x, out=oo),
            repeats,
        )
        rows.append((f"softmax {shape[0]}x{shape[1]}", tn, to))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="another build's mmfast/, renamed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    old = load_baseline(args.baseline)
    print(f"# this build: {os.path.dirname(mmfast.__file__)}; baseline: {old.__file__}")
    print("# bit-for-bit outputs, every kernel variant both builds run:")
    ok = check_identical(mmfast, old)
    if args.no_timing:
        raise SystemExit(0 if ok else 1)
    mmfast.set_num_threads(args.threads)
    old.set_num_threads(args.threads)
    print(f"# {args.threads} thread(s), {mmfast._C.active_variant()}, median of {args.repeats}")
    print("| shape | this build ms | baseline ms | after/before |")
    print("|---|---|---|---|")
    ratios = []
    for name, tn, to in timing_rows(mmfast, old, args.repeats):
        ratios.append(tn / to)
        print(f"| {name} | {tn:.4g} | {to:.4g} | {tn / to:.3f} |", flush=True)
    geo = float(np.exp(np.mean(np.log(ratios))))
    print(f"# geometric mean after/before: {geo:.3f}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
