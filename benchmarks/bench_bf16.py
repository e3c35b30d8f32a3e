"""precision="bf16" vs float32: mmfast fp32, mmfast bf16 and PyTorch bf16, one process, same inputs.

    taskset -c 1 python benchmarks/bench_bf16.py --threads 1     # the README's 1-thread table
    python benchmarks/bench_bf16.py --threads 2
    python benchmarks/bench_bf16.py --only conv --shapes 3x3     # a quick look

Conv: bench_conv.py's shapes (ResNet-50 / MobileNet layers) at batch 1 and 8, prepacked
ops.Conv2d into a preallocated output, vs torch.nn.functional.conv2d on bfloat16 tensors
(oneDNN's AVX512-BF16 / AMX kernels where the CPU has them). Attention: B=1, H=8, L=1024..4096,
D=64/128, causal and not, ops.attention into a preallocated output vs
torch.nn.functional.scaled_dot_product_attention on bfloat16 tensors.

The three are timed in turn, round after round (the order rotated each round), and each
reported time is the median over rounds of a round's mean: a load spike on this shared machine
hits all three alike. With 2+ threads torch is timed in rounds of its own after mmfast's (its
OpenMP workers' spinning would slow whatever runs next, and itself, when interleaved).
Ratios: fp32 time / bf16 time (> 1: bf16 is faster), torch bf16 time /
mmfast bf16 time (> 1: mmfast is faster). Ends with each implementation's error against a
float64 reference of the float32 inputs (max |err| / max |ref|). Not a test: nothing asserts
timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(__file__))
from _common import CONV_SHAPES, tune_allocator

ALLOCATOR = tune_allocator()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmfast  # noqa: E402
from mmfast import _C, ops  # noqa: E402
from mmfast.ops._conv2d import choose_algorithm  # noqa: E402

F = torch.nn.functional
# With 2+ threads torch is timed apart from mmfast: torch's OpenMP workers spin for a while
# after each call and take the second core from whatever runs next (bench_conv.py measured it),
# and interleaved, torch's own calls slowed 5-60x too. Set in main().
APART: tuple[str, ...] = ()


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda k: info.get(k, "?").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')}, model {get('Model')})"


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, min_time: float, apart: tuple = ()
) -> dict:
    """Median ms per call of each fn: `rounds` rounds, each timing every fn over enough calls to
    last about min_time / rounds seconds, in an order rotated every round. The fns named in
    `apart` are timed after the others' rounds, in rounds of their own."""
    names = [n for n in fns if n not in apart]
    inner = {}
    for n in names:
        fns[n]()  # warm-up (packing, workspaces, oneDNN's primitive cache)
        t0 = time.perf_counter()
        fns[n]()
        one = max(time.perf_counter() - t0, 1e-7)
        inner[n] = max(1, int(min_time / rounds / one))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(inner[n]):
                fns[n]()
            samples[n].append((time.perf_counter() - t0) / inner[n] * 1e3)
    result = {n: statistics.median(s) for n, s in samples.items()}
    for n in apart:
        result.update(interleaved({n: fns[n]}, rounds, min_time))
    return result


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def bench_conv(args: argparse.Namespace, rng: np.random.Generator, ratios: dict) -> list[str]:
    print("\n## conv2d\n")
    # "fp32" is the same (direct) kernel in float32: what the bf16 instructions gain. Where the
    # float32 default (algorithm="auto") is another algorithm (Winograd on 3x3 layers), it is
    # timed too: what a user choosing between precisions gets.
    print(
        "| shape | N | GFLOP | fp32 ms | bf16 ms | torch bf16 ms | bf16 GFLOP/s "
        "| bf16 vs fp32 | vs torch bf16 | fp32 default ms | bf16 vs fp32 default |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for name, c, m, hw, k, s, p, g in CONV_SHAPES:
        if args.shapes and not any(f in name for f in args.shapes):
            continue
        w = (rng.standard_normal((m, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        c32 = ops.Conv2d(w, b, stride=s, padding=p, groups=g, algorithm="direct")
        c16 = ops.Conv2d(w, b, stride=s, padding=p, groups=g, precision="bf16")
        # the fp32 default, packed only where it is not the direct kernel above
        default = choose_algorithm("auto", (k, k), (s, s), (1, 1), g, (c, m))
        c32_auto = ops.Conv2d(w, b, stride=s, padding=p, groups=g) if default != "direct" else None
        tw, tb = torch.from_numpy(w).bfloat16(), torch.from_numpy(b).bfloat16()
        for n in args.batch:
            x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
            tx = torch.from_numpy(x).bfloat16()
            out = np.empty(c32.output_shape(x.shape), np.float32)
            out16 = np.empty_like(out)
            flops = 2 * out.size * (c // g) * k * k

            def run_torch(tx=tx, tw=tw, tb=tb, s=s, p=p, g=g):
                return F.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)

            fns = {
                "fp32": lambda x=x, out=out, c32=c32: c32(x, out=out),
                "bf16": lambda x=x, out=out16, c16=c16: c16(x, out=out),
                "torch": run_torch,
            }
            if c32_auto is not None:
                out_auto = np.empty_like(out)
                fns["auto"] = lambda x=x, out=out_auto, c=c32_auto: c(x, out=out)
            t = interleaved(fns, args.rounds, args.min_time, APART)
            r = t["fp32"] / t["bf16"]
            ratios.setdefault(("conv", n), []).append(r)
            t_auto = t.get("auto", t["fp32"])
            ratios.setdefault(("conv fp32 default", n), []).append(t_auto / t["bf16"])
            shown = f"{t_auto:.3f} ({c32_auto.algorithm})" if c32_auto is not None else "="
            print(
                f"| {name} | {n} | {flops / 1e9:.3f} | {t['fp32']:.3f} | {t['bf16']:.3f} "
                f"| {t['torch']:.3f} | {flops / t['bf16'] / 1e6:.0f} | {r:.2f}x "
                f"| {t['torch'] / t['bf16']:.2f}x | {shown} | {t_auto / t['bf16']:.2f}x |",
                flush=True,
            )
            if n == args.batch[0]:
                ref = F.conv2d(
                    *(torch.from_numpy(a).double() for a in (x, w, b)),
                    stride=s,
                    padding=p,
                    groups=g,
                ).numpy()
                checks.append(
                    f"conv {name} N={n}: fp32 {rel_err(out, ref):.1e}, bf16 "
                    f"{rel_err(out16, ref):.1e}, torch bf16 "
                    f"{rel_err(run_torch().float().numpy(), ref):.1e}"
                )
    return checks


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """float64 reference for the first head (enough for the check, cheap at L = 4096)."""
    q64, k64, v64 = (a[0, 0].astype(np.float64) for a in (q, k, v))
    s = q64 @ k64.T / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape, bool)), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v64


def bench_attention(args: argparse.Namespace, rng: np.random.Generator, ratios: dict) -> list:
    B, H = 1, 8
    print("\n## attention (B=1, H=8)\n")
    print(
        "| D | L | causal | GFLOP | fp32 ms | bf16 ms | torch bf16 ms | bf16 GFLOP/s "
        "| bf16 vs fp32 | vs torch bf16 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for d in args.dims:
        for L in args.lengths:
            q, k, v = (rng.standard_normal((B, H, L, d)).astype(np.float32) for _ in range(3))
            tq, tk, tv = (torch.from_numpy(a).bfloat16() for a in (q, k, v))
            for causal in (False, True):
                out, out16 = np.empty_like(q), np.empty_like(q)
                flops = 4.0 * B * H * L * L * d / (2 if causal else 1)

                def run_torch(tq=tq, tk=tk, tv=tv, causal=causal):
                    return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

                t = interleaved(
                    {
                        "fp32": lambda q=q, k=k, v=v, o=out, c=causal: ops.attention(
                            q, k, v, is_causal=c, out=o
                        ),
                        "bf16": lambda q=q, k=k, v=v, o=out16, c=causal: ops.attention(
                            q, k, v, is_causal=c, out=o, precision="bf16"
                        ),
                        "torch": run_torch,
                    },
                    args.rounds,
                    args.min_time,
                    APART,
                )
                r = t["fp32"] / t["bf16"]
                ratios.setdefault(("attention", d), []).append(r)
                print(
                    f"| {d} | {L} | {causal} | {flops / 1e9:.2f} | {t['fp32']:.2f} "
                    f"| {t['bf16']:.2f} | {t['torch']:.2f} | {flops / t['bf16'] / 1e6:.0f} "
                    f"| {r:.2f}x | {t['torch'] / t['bf16']:.2f}x |",
                    flush=True,
                )
                if L == args.lengths[0]:
                    ref = attention_ref(q, k, v, causal)
                    tor = run_torch().float().numpy()[0, 0]
                    checks.append(
                        f"attention D={d} L={L} causal={causal}: fp32 "
                        f"{rel_err(out[0, 0], ref):.1e}, bf16 {rel_err(out16[0, 0], ref):.1e}, "
                        f"torch bf16 {rel_err(tor, ref):.1e}"
                    )
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-time", type=float, default=0.6, help="seconds per implementation")
    ap.add_argument("--only", choices=["conv", "attention"])
    ap.add_argument("--shapes", nargs="*", help="substrings of conv shape names to run")
    args = ap.parse_args()

    global APART
    APART = ("torch",) if args.threads > 1 else ()
    torch.set_num_threads(args.threads)
    mmfast.set_num_threads(args.threads)
    affinity = sorted(os.sched_getaffinity(0))
    print(f"# bench_bf16  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.node()}")
    print(f"# CPU: {cpu_name()}; affinity {affinity}")
    print(
        f"# {args.threads} threads; torch {torch.__version__}, mmfast {mmfast.__version__} "
        f"(variant {_C.active_variant()}, bf16 kernels: "
        f"{'AVX512-BF16' if _C.bf16_native() else 'portable fallback'}); {ALLOCATOR}"
    )
    print(
        f"# {args.rounds} interleaved rounds, ~{args.min_time:.1f} s per implementation"
        + ("; torch timed apart" if APART else "")
    )
    rng = np.random.default_rng(0)
    ratios: dict = {}
    checks = []
    if args.only != "attention":
        checks += bench_conv(args, rng, ratios)
    if args.only != "conv":
        checks += bench_attention(args, rng, ratios)
    print()
    for key, r in ratios.items():
        geo = float(np.exp(np.mean(np.log(r))))
        what = "bf16 vs fp32 default (auto)" if key[0] == "conv fp32 default" else "bf16 vs fp32"
        print(
            f"# {key[0].split()[0]} {'D' if key[0] == 'attention' else 'N'}={key[1]}: {what} "
            f"geometric mean {geo:.2f}x, min {min(r):.2f}x, max {max(r):.2f}x"
        )
    print("\n# error vs float64 of the float32 inputs (max |err| / max |ref|):")
    for line in checks:
        print(f"#   {line}")


if __name__ == "__main__":
    main()
