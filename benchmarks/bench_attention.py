"""mmfast.ops.attention vs PyTorch SDPA vs ONNX Runtime com.microsoft.MultiHeadAttention vs the
naive softmax(QKᵀ)V, in one run, on the same inputs and thread count.

    python benchmarks/bench_attention.py                # the README table (B=1, H=8, fp32)
    python benchmarks/bench_attention.py --lengths 64 256 --dims 64 --no-rss   # quick look

Reports per (D, L, causal): median ms of interleaved repeats, GFLOP/s (4·B·H·L²·D, halved for
causal), % of the fp32 matmul peak measured in this run (torch sgemm 2048³, same threads), the
speed-up of mmfast over SDPA and ORT, and the peak extra memory of each implementation: the RSS
high-water mark growth over one call in a fresh process (inputs, session and warm-up excluded).
Ends with a correctness check of every implementation against a float64 reference. The
speed-ups are also drawn as bars per shape (benchmarks/plots/attention_speedup_<threads>t.png,
or --plot FILE; --plot none: no picture).
Needs torch, onnx and onnxruntime (the `export` extra). Not a test: nothing here asserts timing.
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
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

import mmfast
from mmfast import ops

sys.path.insert(0, os.path.dirname(__file__))
from _common import cpu_line
from _plots import PLOTS, can_plot, speedup_bars

IMPLS = ("mmfast", "sdpa", "ort_mha", "naive")
B, H = 1, 8


def flops(L: int, D: int, causal: bool) -> float:
    return 4.0 * B * H * L * L * D / (2 if causal else 1)


def mha_session(
    L: int, D: int, causal: bool, threads: int, lq: int | None = None
) -> ort.InferenceSession:
    """com.microsoft.MultiHeadAttention: query (B, Lq, H·D), key/value (B, L, H·D), attribute
    num_heads; unidirectional=1 is its causal (top-left) mask."""
    attrs: dict[str, Any] = {"num_heads": H}
    if causal:
        attrs["unidirectional"] = 1
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", **attrs
    )
    lens = {"q": lq or L, "k": L, "v": L, "y": lq or L}
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, lens[n], H * D]) for n in "qkvy"]
    graph = helper.make_graph([node], "mha", vi[:3], vi[3:])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def to_bld(x: torch.Tensor) -> np.ndarray:
    """(B, H, L, D) -> (B, L, H·D), the contrib op's layout (done once, outside the timing)."""
    return np.ascontiguousarray(x.transpose(1, 2).reshape(B, x.shape[2], -1).numpy())


def make_inputs(
    L: int, D: int, lq: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(L * 1000 + D)
    q = torch.randn(B, H, lq or L, D, generator=g)  # (B, H, Lq, D)
    k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(2))  # (B, H, L, D)
    return q, k, v


def make_runner(
    impl: str, L: int, D: int, causal: bool, threads: int, lq: int | None = None
) -> Callable[[], Any]:
    """lq=1 (with causal=False) is a KV-cache decode step: one query against L keys."""
    q, k, v = make_inputs(L, D, lq)
    F = torch.nn.functional
    if impl == "mmfast" and lq == 1:  # the decode call: bottom-right causal = all keys
        return lambda: ops.attention(q, k, v, is_causal=True, causal_align="bottom_right")
    if impl == "mmfast":
        return lambda: ops.attention(q, k, v, is_causal=causal)
    if impl == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "ort_mha":
        sess = mha_session(L, D, causal, threads, lq)
        feeds = {"q": to_bld(q), "k": to_bld(k), "v": to_bld(v)}
        return lambda: sess.run(None, feeds)[0]
    if impl == "naive":
        scale = 1.0 / D**0.5
        upper = torch.ones(L, L, dtype=torch.bool).triu(1) if causal else None

        def naive() -> torch.Tensor:
            s = (q @ k.transpose(-1, -2)) * scale  # (B, H, L, L): materialised
            if upper is not None:
                s = s.masked_fill(upper, float("-inf"))
            return torch.softmax(s, dim=-1) @ v

        return naive
    raise ValueError(impl)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    mmfast.set_num_threads(threads)


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(times) / 1e9


def rss_child(impl: str, L: int, D: int, causal: bool, threads: int) -> None:
    """In a fresh process: reset the RSS high-water mark after setup and warm-up state is
    excluded, run once, print the growth in MiB."""
    set_threads(threads)
    run = make_runner(impl, L, D, causal, threads)

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
        raise KeyError(key)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    base = status("VmRSS")
    run()
    print((status("VmHWM") - base) / 1024.0)


def rss_growth(impl: str, L: int, D: int, causal: bool, threads: int) -> float:
    args = [sys.executable, __file__, "--rss-child", impl, str(L), str(D), str(int(causal))]
    args += ["--threads", str(threads)]
    r = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    return float(r.stdout.strip().splitlines()[-1])


def bench(
    L: int, D: int, causal: bool, threads: int, budget_s: float, lq: int | None = None
) -> dict[str, float]:
    """Median time of each implementation. Each one runs its repeats in a block (after a pause
    and a warm-up call) and the blocks rotate over 3 rounds: interleaving single calls would
    let one library's spinning pool threads (OpenMP, ORT) steal the cores from the next."""
    runners = {impl: make_runner(impl, L, D, causal, threads, lq) for impl in IMPLS}
    first = {}
    for impl, run in runners.items():  # warm-up (ORT arena, torch allocator, thread pools)
        run()
        t = time.perf_counter()
        run()
        first[impl] = time.perf_counter() - t
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    rounds = 3
    for _ in range(rounds):
        for impl, run in runners.items():
            n = int(max(2, min(30, budget_s / rounds / len(IMPLS) / max(first[impl], 1e-6))))
            time.sleep(0.05)
            run()
            for _ in range(n):
                t = time.perf_counter()
                run()
                times[impl].append(time.perf_counter() - t)
    return {impl: statistics.median(ts) for impl, ts in times.items()} | {
        "reps": float(min(len(ts) for ts in times.values()))
    }


def correctness(threads: int) -> list[str]:
    """Max abs error of each implementation against float64 at L=300, D=64 (both masks)."""
    lines = []
    for causal in (False, True):
        L, D = 300, 64
        q, k, v = make_inputs(L, D)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), is_causal=causal
        )
        errs = {}
        for impl in IMPLS:
            out = make_runner(impl, L, D, causal, threads)()
            out_t = torch.as_tensor(np.asarray(out))
            if impl == "ort_mha":  # (B, L, H·D) -> (B, H, L, D)
                out_t = out_t.reshape(B, L, H, D).transpose(1, 2)
            errs[impl] = (out_t.double() - ref).abs().max().item()
        lines.append(
            f"causal={causal}: max |err| vs float64: "
            + ", ".join(f"{i} {e:.2e}" for i, e in errs.items())
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=6.0, help="seconds of repeats per row")
    ap.add_argument("--no-rss", action="store_true", help="skip the fresh-process memory runs")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode-step table")
    ap.add_argument("--rss-child", nargs=4, metavar=("IMPL", "L", "D", "CAUSAL"))
    ap.add_argument("--plot", default=None, help="speed-up bars (default plots/...; none: skip)")
    a = ap.parse_args()
    if a.rss_child:
        impl, L, D, c = a.rss_child
        rss_child(impl, int(L), int(D), c == "1", a.threads)
        return

    set_threads(a.threads)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; threads={a.threads}; "
        f"mmfast {mmfast.__version__} ({mmfast._C.active_variant()}), torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}; B={B}, H={H}, fp32"
    )
    print(f"# CPU: {cpu_line()}; {' '.join(sys.argv)}")
    peaks = [matmul_peak(a.threads)]
    rows = []
    for D in a.dims:
        for L in a.lengths:
            for causal in (False, True):
                med = bench(L, D, causal, a.threads, a.budget)
                peaks.append(matmul_peak(a.threads))
                rss = {}
                if not a.no_rss:
                    rss = {impl: rss_growth(impl, L, D, causal, a.threads) for impl in IMPLS}
                rows.append((D, L, causal, med, rss))
                print(f"  done D={D} L={L} causal={causal} ({int(med['reps'])} reps)", flush=True)
    decode = []
    if not a.no_decode:
        for D in a.dims:
            for L in (x for x in a.lengths if x >= 256):
                decode.append((D, L, bench(L, D, False, a.threads, a.budget / 2, lq=1)))
                print(f"  done decode D={D} Lk={L}", flush=True)
    peak = statistics.median(peaks)
    print(
        f"\nfp32 matmul peak in this run (torch 2048³ sgemm, {a.threads} threads, median of "
        f"{len(peaks)} measurements, each the best of 5): {peak:.0f} GFLOP/s "
        f"(range {min(peaks):.0f}-{max(peaks):.0f})\n"
    )
    hdr = (
        "| D | L | causal | mmfast ms | SDPA ms | ORT MHA ms | naive ms | mmfast GFLOP/s (% peak)"
        " | SDPA GFLOP/s | ORT GFLOP/s | vs SDPA | vs ORT | vs faster "
        "| extra MiB mmfast / SDPA / ORT / naive |"
    )
    print(hdr)
    print("|" + "---|" * hdr.count(" | ") + "---|")
    for D, L, causal, med, rss in rows:
        f = flops(L, D, causal)
        gf = {impl: f / med[impl] / 1e9 for impl in IMPLS}
        mem = " / ".join(f"{rss[i]:.1f}" for i in IMPLS) if rss else "-"
        print(
            f"| {D} | {L} | {'yes' if causal else 'no'} | {med['mmfast'] * 1e3:.3f} | "
            f"{med['sdpa'] * 1e3:.3f} | {med['ort_mha'] * 1e3:.3f} | {med['naive'] * 1e3:.3f} | "
            f"{gf['mmfast']:.0f} ({100 * gf['mmfast'] / peak:.0f}%) | {gf['sdpa']:.0f} | "
            f"{gf['ort_mha']:.0f} | {med['sdpa'] / med['mmfast']:.2f}× | "
            f"{med['ort_mha'] / med['mmfast']:.2f}× | "
            f"{min(med['sdpa'], med['ort_mha']) / med['mmfast']:.2f}× | {mem} |"
        )
    if decode:
        print(
            "\nDecode step (Lq = 1 query against Lk cached keys, B=1, H=8; mmfast with "
            "is_causal=True, causal_align='bottom_right'):\n"
        )
        print("| D | Lk | mmfast µs | SDPA µs | ORT MHA µs | naive µs | vs SDPA | vs ORT |")
        print("|---|---|---|---|---|---|---|---|")
        for D, L, med in decode:
            us = {impl: med[impl] * 1e6 for impl in IMPLS}
            print(
                f"| {D} | {L} | {us['mmfast']:.1f} | {us['sdpa']:.1f} | {us['ort_mha']:.1f} | "
                f"{us['naive']:.1f} | {us['sdpa'] / us['mmfast']:.2f}× | "
                f"{us['ort_mha'] / us['mmfast']:.2f}× |"
            )
    print()
    for line in correctness(a.threads):
        print(line)
    plot = a.plot or str(PLOTS / f"attention_speedup_{a.threads}t.png")
    if plot != "none" and rows and can_plot():
        labels = [f"D={D} L={L}{' causal' if c else ''}" for D, L, c, _, _ in rows]
        peers = {
            "SDPA": [med["sdpa"] / med["mmfast"] for *_, med, _ in rows],
            "ORT MHA": [med["ort_mha"] / med["mmfast"] for *_, med, _ in rows],
        }
        title = (
            f"attention (B={B}, H={H}, fp32): mmfast vs PyTorch SDPA and ORT MultiHeadAttention"
            f"\n{a.threads} thread(s), {time.strftime('%Y-%m-%d', time.gmtime())}, {cpu_line()}"
        )
        speedup_bars(labels, peers, Path(plot), title)


if __name__ == "__main__":
    main()
