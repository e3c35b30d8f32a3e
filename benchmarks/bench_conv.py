"""conv2d: mmfast vs PyTorch (oneDNN) vs ONNX Runtime (MLAS), same process, same inputs.

    python benchmarks/bench_conv.py [--batch 1 8] [--threads 2] [--repeats 15]

For each shape: median ms, GFLOP/s, % of the fp32 matmul peak measured at the start of the
same run, and the ratios (time of the peer / time of mmfast: > 1 means mmfast is faster).
mmfast runs its default algorithm="auto" (Winograd F(2x2, 3x3) on the 3x3 layers, whose
GFLOP/s are "effective": the direct convolution's FLOPs over the time, so % of peak may pass
100%); where that is not the direct kernel, the direct kernel is timed too ("direct ms") and its
geometric means printed as well.
torch runs F.conv2d (oneDNN) with a tuned allocator (see _common.py); ONNX Runtime runs a
one-node Conv model with IO binding into a preallocated output; mmfast runs a prepacked
ops.Conv2d into a preallocated output. Every result is checked against torch before timing.
The ratios are also drawn as bars per shape (benchmarks/plots/conv_speedup_<threads>t.png, or
--plot FILE; --plot none: no picture).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import CONV_SHAPES, cpu_line, matmul_peak_gflops, tune_allocator
from _plots import PLOTS, can_plot, speedup_bars

ALLOCATOR = tune_allocator()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import mmfast  # noqa: E402
from mmfast import ops  # noqa: E402

SHAPES = CONV_SHAPES


def ort_session(w: np.ndarray, b: np.ndarray, k: int, s: int, p: int, g: int, threads: int):
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def sample_ms(fn, n: int, min_time: float = 0.04) -> list[float]:
    """n samples of fn()'s time in ms, each the mean over enough calls to last min_time / n
    seconds (after one warm-up call, which also sizes the batches)."""
    t0 = time.perf_counter()
    fn()
    inner = max(1, int(min_time / n / max(time.perf_counter() - t0, 1e-7)))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner * 1e3)
    return out


def rotated_medians(fns: list, repeats: int, rounds: int) -> list[float]:
    """Median ms per call of each fn: `rounds` rounds, each timing every fn in turn over
    max(3, repeats // rounds) samples (sample_ms's batches); the median over all its samples."""
    per_round = max(3, repeats // max(rounds, 1))
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(max(rounds, 1)):
        order = list(range(len(fns))) if r % 2 == 0 else list(reversed(range(len(fns))))
        for i in order:
            time.sleep(0.02)
            samples[i].extend(sample_ms(fns[i], per_round))
    return [statistics.median(s) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5, help="rotations of the three timers")
    ap.add_argument("--shapes", nargs="*", help="substrings of shape names to run")
    ap.add_argument("--plot", default=None, help="speed-up bars (default plots/...; none: skip)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    mmfast.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.threads)
    print(f"# bench_conv  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.node()}")
    print(
        f"# {args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"mmfast {mmfast.__version__} ({mmfast._C.active_variant()}); {ALLOCATOR}"
    )
    print(f"# CPU: {cpu_line()}; {' '.join(sys.argv)}")
    print(
        "# fp32 matmul peak (the faster of torch.mm and ORT MatMul, 2048^3, best block, same "
        f"run): {peak:.0f} GFLOP/s"
    )
    print(
        "| shape | N | GFLOP | algorithm | mmfast ms | direct ms | torch ms | ORT ms "
        "| mmfast GFLOP/s | % peak | vs torch | vs ORT | vs faster | direct vs faster |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    ratios: dict[int, list[float]] = {}  # batch -> (faster peer time / mmfast time) per shape
    direct: dict[int, list[float]] = {}  # the same with the direct kernel everywhere
    for shape_spec in SHAPES:
        if args.shapes and not any(f in shape_spec[0] for f in args.shapes):
            continue
        bench_shape(shape_spec, args, rng, peak, ratios, direct)
    for label, table in (("mmfast (auto)", ratios), ("mmfast direct kernel only", direct)):
        for n, r in table.items():
            geo = float(np.exp(np.mean(np.log(r))))
            print(
                f"# N={n}: geometric mean of {label} vs the faster of torch and ORT: {geo:.2f}x "
                f"(lowest {min(r):.2f}x)"
            )
    plot = args.plot or str(PLOTS / f"conv_speedup_{args.threads}t.png")
    if plot != "none" and BARS and can_plot():
        title = (
            f"conv2d: mmfast vs torch (oneDNN) and ORT (MLAS)\n{args.threads} thread(s), "
            f"{datetime.now(timezone.utc):%Y-%m-%d}, {cpu_line()}"
        )
        peers = {"torch": [r[1] for r in BARS], "ORT": [r[2] for r in BARS]}
        speedup_bars([r[0] for r in BARS], peers, Path(plot), title)


# (shape and batch, torch time / mmfast time, ORT time / mmfast time) per row: the picture
BARS: list[tuple[str, float, float]] = []


def bench_shape(
    spec: tuple,
    args: argparse.Namespace,
    rng: np.random.Generator,
    peak: float,
    ratios: dict[int, list[float]],
    direct: dict[int, list[float]],
) -> None:
    name, c, m, hw, k, s, p, g = spec
    w = (rng.standard_normal((m, c // g, k, k)) / np.sqrt(c // g * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    sess = ort_session(w, b, k, s, p, g, args.threads)
    conv = ops.Conv2d(w, b, stride=s, padding=p, groups=g)
    conv_direct = None
    if conv.algorithm != "direct":
        conv_direct = ops.Conv2d(w, b, stride=s, padding=p, groups=g, algorithm="direct")
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    for n in args.batch:
        x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        tx = torch.from_numpy(x)
        shape = conv.output_shape(x.shape)
        out = np.empty(shape, np.float32)
        flops = 2 * np.prod(shape) * (c // g) * k * k

        def run_torch(tx=tx):
            return torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)

        ref = run_torch().numpy()
        conv(x, out=out)
        scale = np.abs(ref).max()
        assert np.abs(out - ref).max() <= 1e-4 * scale, f"{name}: mmfast disagrees with torch"

        binding = sess.io_binding()
        x_ort = ort.OrtValue.ortvalue_from_numpy(x)
        y_ort = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32)
        binding.bind_ortvalue_input("x", x_ort)
        binding.bind_ortvalue_output("y", y_ort)
        sess.run_with_iobinding(binding)
        assert np.abs(y_ort.numpy() - ref).max() <= 1e-4 * scale, f"{name}: ORT disagrees"

        # Each timed in blocks, not call by call: torch's OpenMP workers spin on the second core
        # for a while after each call, and whatever runs right after them (measured: mmfast,
        # 1.2 ms alone vs 2.2 ms interleaved with torch) loses that core. The blocks rotate over
        # `rounds` rounds (a pause before each) so that a busy spell on a shared machine hits
        # all three alike; the figure is the median of every block's time.
        fns = [
            lambda x=x, out=out: conv(x, out=out),
            run_torch,
            lambda binding=binding: sess.run_with_iobinding(binding),
        ]
        if conv_direct is not None:
            out_d = np.empty(shape, np.float32)
            conv_direct(x, out=out_d)
            assert np.abs(out_d - ref).max() <= 1e-4 * scale, f"{name}: direct disagrees"
            fns.append(lambda x=x, out=out_d: conv_direct(x, out=out))
        times = rotated_medians(fns, args.repeats, args.rounds)
        t_mm, t_torch, t_ort = times[:3]
        t_direct = times[3] if conv_direct is not None else t_mm
        faster = min(t_torch, t_ort)
        ratios.setdefault(n, []).append(faster / t_mm)
        direct.setdefault(n, []).append(faster / t_direct)
        BARS.append((f"{name}  N={n}", t_torch / t_mm, t_ort / t_mm))
        gflops = flops / (t_mm * 1e-3) / 1e9
        shown_direct = f"{t_direct:.3f}" if conv_direct is not None else "="
        print(
            f"| {name} | {n} | {flops / 1e9:.3f} | {conv.algorithm} | {t_mm:.3f} | {shown_direct} "
            f"| {t_torch:.3f} | {t_ort:.3f} | {gflops:.0f} | {100 * gflops / peak:.0f}% "
            f"| {t_torch / t_mm:.2f}x | {t_ort / t_mm:.2f}x | {faster / t_mm:.2f}x "
            f"| {faster / t_direct:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
