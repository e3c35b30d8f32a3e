"""GPU benchmark: mmfast's CUDA attention and conv2d vs torch (SDPA flash backend, cuDNN),
same process, same inputs, CUDA-event timing, medians.

    python benchmarks/gpu/bench_gpu.py [--quick] [--json OUT.json]

Prints ms, TFLOP/s, % of the bf16 matmul peak measured in the same run, and mmfast/torch
speed ratios (> 1 means mmfast is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmfast.ops import Conv2d, attention, conv2d


def bench_ms(fn, reps: int = 20, warmup: int = 3, rounds: int = 3) -> float:
    """Median over `rounds` of the mean time of `reps` back-to-back calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def _row(op: str, shape: str, flops: float, t_ours: float, t_ref: float, peak: float) -> dict:
    """One table row: times in ms, rates in TFLOP/s, % of the run's bf16 matmul peak, and the
    speed ratio (> 1: mmfast faster)."""
    return {
        "op": op,
        "shape": shape,
        "mmfast_ms": t_ours,
        "torch_ms": t_ref,
        "mmfast_tflops": flops / t_ours / 1e9,
        "torch_tflops": flops / t_ref / 1e9,
        "pct_peak": 100 * flops / t_ours / 1e9 / peak,
        "speedup": t_ref / t_ours,
    }


def matmul_peak_tflops() -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b, reps=10)
    return 2 * n**3 / ms / 1e9


def bench_attention(quick: bool, peak: float) -> list[dict]:
    rows = []
    lengths = [1024, 4096] if quick else [1024, 4096, 16384]
    for L in lengths:
        for causal in (False, True):
            B, H, D = (16 if L <= 1024 else 4 if L <= 4096 else 1), 16, 128  # B*H >= 16
            q, k, v = (
                torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)
            )
            flops = 4 * B * H * L * L * D * (0.5 if causal else 1.0)

            def ours():
                attention(q, k, v, is_causal=causal)

            def sdpa():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            reps = 5 if L >= 16384 else 20
            t_ours, t_ref = bench_ms(ours, reps), bench_ms(sdpa, reps)
            rows.append(
                _row(
                    "attention bf16",
                    f"B{B} H{H} L{L} D{D}{' causal' if causal else ''}",
                    flops,
                    t_ours,
                    t_ref,
                    peak,
                )
            )
    return rows


RESNET50_3x3 = [(64, 56), (128, 28), (256, 14), (512, 7)]


def bench_conv(quick: bool, peak: float) -> list[dict]:
    torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape
    # Exact float32 against exact float32: torch lets cuDNN use TF32 (10-bit mantissas) for
    # float32 convolutions by default, which mmfast's float32 path never does.
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        if quick and dtype is torch.float16:
            continue
        for C, HW in RESNET50_3x3:
            N = 32
            x = torch.randn(N, C, HW, HW, device="cuda", dtype=dtype)
            w = torch.randn(C, C, 3, 3, device="cuda", dtype=dtype) * 0.05
            bias = torch.randn(C, device="cuda", dtype=dtype)
            flops = 2 * N * C * C * 9 * HW * HW

            conv = Conv2d(w, bias, padding=1, activation="relu")  # the inference form

            def ours():
                conv(x)

            def ref():
                F.relu(F.conv2d(x, w, bias, padding=1))

            t_ours, t_ref = bench_ms(ours, 50, rounds=5), bench_ms(ref, 50, rounds=5)
            rows.append(
                _row(
                    f"conv3x3 {str(dtype).removeprefix('torch.')}",
                    f"N{N} {C}->{C} @{HW}",
                    flops,
                    t_ours,
                    t_ref,
                    peak,
                )
            )
    # depthwise (MobileNet-like), bf16
    for C, HW in [(128, 56), (512, 14)]:
        N = 32
        x = torch.randn(N, C, HW, HW, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.bfloat16)
        t_ours = bench_ms(lambda: conv2d(x, w, padding=1, groups=C))
        t_ref = bench_ms(lambda: F.conv2d(x, w, padding=1, groups=C))
        flops = 2 * N * C * 9 * HW * HW
        rows.append(_row("depthwise3x3 bfloat16", f"N{N} {C}ch @{HW}", flops, t_ours, t_ref, peak))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--only", choices=["attention", "conv"], help="one op only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: needs an NVIDIA GPU and a CUDA build of torch")
    torch.manual_seed(0)
    peak = matmul_peak_tflops()
    print(
        f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"bf16 matmul peak (8192^3, this run): {peak:.0f} TFLOP/s",
        flush=True,
    )
    rows = []
    for name, fn in (("attention", bench_attention), ("conv", bench_conv)):
        if args.only in (None, name):
            try:
                rows += fn(args.quick, peak)
            except Exception as e:  # keep the other op's numbers
                print(f"{name} benchmark failed: {type(e).__name__}: {e}", flush=True)
    print(
        "\n| op | shape | mmfast ms | torch ms | mmfast TFLOP/s | torch TFLOP/s | "
        "% peak | mmfast/torch speed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['op']} | {r['shape']} | {r['mmfast_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{r['mmfast_tflops']:.0f} | {r['torch_tflops']:.0f} | {r['pct_peak']:.0f}% | "
            f"{r['speedup']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "peak_tflops": peak, "rows": rows},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
