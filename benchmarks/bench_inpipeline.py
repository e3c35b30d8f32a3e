"""Inside the pipelines: would mmfast's kernels (mmfast.ops.conv2d / attention) make the
captioners faster end to end if they ran in place of ONNX Runtime's nodes?

    taskset -c 1 python benchmarks/bench_inpipeline.py --threads 1
    python benchmarks/bench_inpipeline.py --threads 2

Two captioners, built here with random weights (no hub, no training: timing and token identity
do not need trained weights) and exported as the runtime loads them, cached in --workdir:
  - own: mmfast's CNN encoder + Transformer decoder (``caption_transformer``, the config's
    defaults: 64 px, widths 32/64/128, dim 192, 4 heads, 64 regions);
  - hf: a VisionEncoderDecoder, ViT-B/16 at 224 (self-attention L = 197, D = 64, 12 heads) +
    GPT-2 124M (cross-attention over the 197 image positions), ``--hf-size base``.

Three parts (``--parts``):
  profile  ORT's per-node profile of every graph run by one ``Captioner.caption`` call (greedy,
           20 tokens; the feeds are recorded from the real call and replayed in profiling
           sessions with the runtime's session options): the share of the call spent in Conv
           nodes (own encoder) and in the attention core (QK^T MatMul .. Softmax .. PV MatMul)
           of each attention, split into encoder self-, decoder self- and cross-attention.
           That share bounds the end-to-end gain of any replacement (Amdahl).
  micro    mmfast's kernel against ORT's nodes on exactly those shapes, batch 1 and 8,
           interleaved: each conv as a one-node ORT model (Conv + its fused Relu) vs
           ``mmfast.ops.Conv2d``; each attention as ORT's subgraph (Transpose, MatMul, scale,
           Softmax, MatMul) vs ``mmfast.ops.attention``, and vs the same kernel behind an
           onnxruntime-extensions PyOp (the custom-op route's cost per call).
  route    the custom-op route end to end: a copy of the graph whose nodes are replaced by
           PyOps (domain ai.onnx.contrib) calling mmfast (own encoder: every Conv (+ Relu);
           ViT encoder: every self-attention core), loaded into a second Captioner; call
           latency of both interleaved, tokens compared, encoder outputs compared numerically.

Timings are medians; the two sides of every comparison run in turn in one process.
onnxruntime-extensions is needed for the PyOp rows and the route (``pip install
onnxruntime-extensions``); without it they are skipped, said aloud.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import onnx
import onnxruntime as ort
from _common import tune_allocator
from onnx import TensorProto, helper, numpy_helper

import mmfast
from mmfast import _C
from mmfast.captioner import Captioner
from mmfast.ops import Conv2d, attention

CONV_OPS = {"Conv", "FusedConv"}  # NCHWc convs keep the op name "Conv" in ORT's profile
LAYOUT_OPS = {"ReorderInput", "ReorderOutput"}  # ORT's NCHWc layout changes around its convs
# between the scores' MatMul and the Softmax, and between the Softmax and the PV MatMul
SCORE_OPS = {"Add", "Mul", "Div", "Where"}
PROB_OPS = {"IsNaN", "Where"}
MATMUL_OPS = {"MatMul", "FusedMatMul"}
ATT_KINDS = ("att_encoder_self", "att_decoder_self", "att_cross")


def ort_options(threads: int) -> ort.SessionOptions:
    """The runtime's session options (mmfast.session.Session._session)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """n smooth random RGB images (uint8, various sizes): content does not change the work."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(x) for x in rng.integers(180, 320, 2))
        base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        out.append(np.ascontiguousarray(np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w]))
    return out


# ---- building the two captioners ------------------------------------------------------------


def build_own(root: Path) -> Path:
    """mmfast's own Transformer captioner, default config, random weights -> bundle."""
    bundle = root / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    import torch

    from mmfast.preprocess import PreprocessConfig
    from mmfast.tokenizer import Tokenizer
    from mmfast_export.checkpoint import save_weights
    from mmfast_export.hf.build import shapes_captions
    from mmfast_export.onnx_export import export_run
    from mmfast_export.runs import build_model

    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.build(shapes_captions(200))
    model_cfg = {"kind": "caption_transformer", "vocab_size": len(tok), "dropout": 0.0}
    torch.manual_seed(0)
    model = build_model("caption", model_cfg)
    with torch.no_grad():  # sharper logits than at init: fewer near-ties between tokens
        model.head.weight.mul_(8.0)
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    prep = PreprocessConfig(size=model.cfg.encoder.image_size)
    cfg = {"format": 1, "task": "caption", "model": model_cfg, "preprocess": prep.to_dict()}
    (run / "config.json").write_text(json.dumps({**cfg, "vocab": "vocab.txt"}))
    print(f"exporting the own captioner to {bundle} ...", flush=True)
    export_run(run, bundle)
    return bundle


def build_hf(root: Path, size: str) -> Path:
    """ViT + GPT-2 VisionEncoderDecoder of `size`, random weights -> bundle."""
    bundle = root / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from mmfast_export import export
    from mmfast_export.hf.build import build_vit_gpt2

    print(f"building and exporting ViT-GPT-2 {size} to {bundle} (~2 min for base) ...", flush=True)
    model_dir = build_vit_gpt2(root / "model", size)
    export(model_dir, bundle)
    return bundle


# ---- part 1: per-node profile -----------------------------------------------------------------


def record_feeds(cap: Captioner, fn: Callable[[], object]) -> list[tuple[str, dict]]:
    """The (graph, feeds) of every graph run that fn() makes through cap."""
    calls: list[tuple[str, dict]] = []
    run = cap.run

    def recording(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((graph, dict(feeds)))
        return run(graph, feeds)

    cap.run = recording  # type: ignore[method-assign]
    try:
        fn()
    finally:
        del cap.run
    return calls


def attention_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Each attention core of a graph: its node names from the scores' MatMul to the PV MatMul
    (with the scale / mask / NaN-guard nodes between), and the Softmax's name."""
    prod = {o: n for n in model.graph.node for o in n.output}
    cons: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    found = []
    for sm in (n for n in model.graph.node if n.op_type == "Softmax"):
        names, x = [sm.name], prod.get(sm.input[0])
        while x is not None and x.op_type in SCORE_OPS:
            names.append(x.name)
            # follow the operand that carries the scores (the one made by a MatMul chain)
            ins = [prod[i] for i in x.input if i in prod]
            x = next((p for p in ins if p.op_type in MATMUL_OPS), None) or next(
                (p for p in ins if p.op_type in SCORE_OPS), None
            )
        if x is None or x.op_type not in MATMUL_OPS:
            continue
        names.append(x.name)
        out, seen = sm.output[0], set()
        pv = None
        frontier = list(cons.get(out, []))
        while frontier:
            c = frontier.pop()
            if c.name in seen:
                continue
            seen.add(c.name)
            if c.op_type in MATMUL_OPS:
                pv = c
            elif c.op_type in PROB_OPS:
                names.append(c.name)
                frontier += cons.get(c.output[0], [])
        if pv is None:
            continue
        names.append(pv.name)
        found.append({"softmax": sm.name, "nodes": names})
    return found


class GraphProfile:
    """One graph in a profiling ORT session (the runtime's options): replays recorded feeds,
    then sorts ORT's per-node kernel times (ms) into categories, per replay round."""

    def __init__(self, path: Path, threads: int, regions: int, tmp: Path) -> None:
        so = ort_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / path.stem)
        so.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(tmp / f"{path.stem}.opt.onnx"), load_external_data=False)
        self.node_att = {nm: a["softmax"] for a in attention_nodes(opt) for nm in a["nodes"]}
        self.encoder, self.regions = path.stem == "encoder", regions
        self.runs_per_round = 0

    def replay(self, feeds_list: list[dict]) -> None:
        """One round (the first call also makes one warm-up run, model_run 0)."""
        if self.runs_per_round == 0:
            self.sess.run(None, feeds_list[0])
            self.runs_per_round = len(feeds_list)
        for feeds in feeds_list:
            self.sess.run(None, feeds)

    def categories(self, rounds: int) -> list[dict[str, float]]:
        prof = json.loads(Path(self.sess.end_profiling()).read_text())
        starts = sorted(e["ts"] for e in prof if e.get("name") == "model_run")
        out = [{"nodes": 0.0, "conv": 0.0, "conv_layout": 0.0} for _ in range(rounds)]
        softmax_lk: dict[str, int] = {}
        per_att: list[dict[str, float]] = [{} for _ in range(rounds)]
        for e in prof:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            run = bisect.bisect_right(starts, e["ts"]) - 1  # the model_run this node ran in
            if run < 1:
                continue
            r = (run - 1) // self.runs_per_round
            name, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
            ms = e["dur"] / 1e3
            out[r]["nodes"] += ms
            if op in CONV_OPS:
                out[r]["conv"] += ms
            elif op in LAYOUT_OPS:
                out[r]["conv_layout"] += ms
            if name in self.node_att:
                sm = self.node_att[name]
                per_att[r][sm] = per_att[r].get(sm, 0.0) + ms
                if op == "Softmax":
                    shapes = e["args"].get("input_type_shape", [])
                    dims = next(iter(shapes[0].values())) if shapes else []
                    softmax_lk[name] = int(dims[-1]) if dims else -1
        for r in range(rounds):
            for k in ATT_KINDS:
                out[r][k] = 0.0
            for sm, ms in per_att[r].items():
                if self.encoder:
                    kind = "att_encoder_self"
                elif softmax_lk.get(sm) == self.regions:
                    kind = "att_cross"
                else:
                    kind = "att_decoder_self"
                out[r][kind] += ms
        return out


def part_profile(
    caps: dict[str, Captioner], images, threads: int, regions: dict, rounds: int
) -> dict[tuple[str, int], dict[str, float]]:
    """Prints the profile table; returns (model, batch) -> call ms and ms per category.

    Each round times one real call, then replays its recorded graph runs under the profiler,
    so that a share (category ms / call ms) compares two moments seconds apart; the shares
    are medians over the rounds (the machine is shared and its load moves)."""
    shares: dict[tuple[str, int], dict[str, float]] = {}
    print("\n## Per-node profile of one caption call (greedy, 20 tokens; ms, medians)")
    print(
        "| model | batch | call ms | all nodes ms | Conv | NCHWc reorder | enc self-att | "
        "dec self-att | cross-att | Conv share | attention share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cap in caps.items():
        for b in (1, 8):
            ims = images[:b]

            def call(cap=cap, ims=ims) -> object:
                return cap.caption(ims, beam_size=1, max_new_tokens=20)

            call()
            calls = record_feeds(cap, call)
            by_graph: dict[str, list[dict]] = {}
            for g, f in calls:
                by_graph.setdefault(g, []).append(f)
            walls = []
            with tempfile.TemporaryDirectory() as tmp:
                profs = {
                    g: GraphProfile(cap.bundle.file(g), threads, regions[name], Path(tmp))
                    for g in by_graph
                }
                for _ in range(rounds):
                    walls.append(timed(call))
                    for g, feeds in by_graph.items():
                        profs[g].replay(feeds)
                per_round: list[dict[str, float]] = [{} for _ in range(rounds)]
                for prof in profs.values():
                    for acc, one in zip(per_round, prof.categories(rounds), strict=True):
                        for k, v in one.items():
                            acc[k] = acc.get(k, 0.0) + v
            for acc, w in zip(per_round, walls, strict=True):
                acc["wall"] = w
                acc["conv_all"] = acc["conv"] + acc["conv_layout"]
                acc["att"] = sum(acc[k] for k in ATT_KINDS)
            med = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
            conv_share = statistics.median(r["conv_all"] / r["wall"] for r in per_round)
            att_share = statistics.median(r["att"] / r["wall"] for r in per_round)
            print(
                f"| {name} | {b} | {med['wall']:.1f} | {med['nodes']:.1f} | {med['conv']:.2f} | "
                f"{med['conv_layout']:.2f} | {med['att_encoder_self']:.2f} | "
                f"{med['att_decoder_self']:.2f} | {med['att_cross']:.2f} | "
                f"{100 * conv_share:.1f}% | {100 * att_share:.1f}% |",
                flush=True,
            )
            # per category: its median share of the call, applied to the median call
            tot = {
                k: statistics.median(r[k] / r["wall"] for r in per_round) * med["wall"]
                for k in ("conv_all", *ATT_KINDS)
            }
            shares[name, b] = {"wall": med["wall"], "conv": tot["conv_all"]}
            shares[name, b].update({k: tot[k] for k in ATT_KINDS})
    return shares


# What each profiled category would run as, for the bound below: the conv stack as a whole;
# decoder self-attention (one query over <= 21 / 32 cached keys) like the cross-attention step
# of its model (same kernel path: <= 4 queries, the same heads and D; an approximation).
STAND_IN = {
    "own": {
        "conv": "convs",
        "att_cross": "own cross (step)",
        "att_decoder_self": "own cross (step)",
    },
    "hf": {
        "att_encoder_self": "ViT-B self",
        "att_cross": "GPT-2 cross (step)",
        "att_decoder_self": "GPT-2 cross (step)",
    },
}


def part_bound(shares: dict, ratios: dict) -> None:
    """Amdahl: the call's speed-up if every profiled node ran as fast as mmfast's kernel did
    in the microbenchmark (time / ratio) and the swap itself cost nothing (a graph cut with
    free boundaries); and with infinitely fast kernels (the category's time removed)."""
    print("\n## Bound on the end-to-end gain (Amdahl; profile x microbenchmark)")
    print(
        "| model | batch | replaceable share of the call | call speed-up, kernels free | "
        "call speed-up, mmfast's kernels at no boundary cost | kernel speed-up over ORT "
        "needed for a 10% faster call |"
    )
    print("|---|---|---|---|---|---|")
    for (name, b), sh in shares.items():
        saved, share = 0.0, 0.0
        for cat, micro in STAND_IN[name].items():
            share += sh[cat]
            saved += sh[cat] * (1.0 - 1.0 / ratios[micro, b])
        wall = sh["wall"]
        # 10% faster: the call takes wall / 1.1, i.e. share * (1 - 1/r) = wall * (1 - 1/1.1)
        need = wall * (1.0 - 1.0 / 1.1)
        r_need = f"{1.0 / (1.0 - need / share):.2f}x" if share > need else "unreachable"
        print(
            f"| {name} | {b} | {100 * share / wall:.1f}% | {wall / (wall - share):.3f}x | "
            f"{wall / (wall - saved):.3f}x | {r_need} |"
        )


# ---- part 2: kernels against ORT's nodes --------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_ms: float) -> dict:
    """Median ms per call of each fn: `rounds` rounds, each timing every fn in turn over
    enough calls to last ~min_ms."""
    inner = {}
    for k, fn in fns.items():
        fn()
        one = max(timed(fn), 1e-3)
        inner[k] = max(1, int(min_ms / one))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                fns[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3 / inner[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def conv_layers(path: Path) -> list[dict[str, Any]]:
    """Every Conv of a graph: weights, bias, attributes, input (C, H, W), fused Relu."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(m.graph.value_info) + list(m.graph.input)
    }
    cons: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out = []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        users = cons.get(n.output[0], [])
        out.append(
            {
                "name": n.name,
                "w": inits[n.input[1]],
                "b": inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None,
                "stride": tuple(at.get("strides", [1, 1])),
                "pads": tuple(at.get("pads", [0, 0, 0, 0])),
                "group": int(at.get("group", 1)),
                "chw": tuple(shapes[n.input[0]][1:]),
                "relu": len(users) == 1 and users[0].op_type == "Relu",
            }
        )
    return out


def ort_conv_model(c: dict[str, Any]) -> bytes:
    """A one-node Conv (+ Relu, which ORT fuses) model with c's weights, dynamic batch."""
    c_in, h, w = c["chw"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(c["w"], "w")]
    ins = ["x", "w"]
    if c["b"] is not None:
        inits.append(numpy_helper.from_array(c["b"], "b"))
        ins.append("b")
    nodes = [
        helper.make_node(
            "Conv",
            ins,
            ["c" if c["relu"] else "y"],
            strides=list(c["stride"]),
            pads=list(c["pads"]),
            group=c["group"],
        )
    ]
    if c["relu"]:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    g = helper.make_graph(nodes, "conv", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def ort_attention_model(scale: float) -> bytes:
    """ORT's attention core as the exported graphs hold it: q (B,H,Lq,D), k (B,H,Lk,D),
    v (B,H,Lk,Dv) -> softmax(scale * q k^T) v; ORT fuses the transpose and the scale into
    a FusedMatMul, as it does in the pipelines' graphs."""
    dims = {"q": ["b", "h", "lq", "d"], "k": ["b", "h", "lk", "d"], "v": ["b", "h", "lk", "dv"]}
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in dims.items()]
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    sc = numpy_helper.from_array(np.array(scale, np.float32), "scale")
    g = helper.make_graph(nodes, "attention", ins, [out], [sc])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# -- the custom-op route: PyOps (onnxruntime-extensions) calling mmfast ---------------------------

_CONVS: dict[str, Conv2d] = {}  # node name -> its Conv2d, weights packed on first call


def _ext() -> Any:
    try:
        import onnxruntime_extensions as ortx
    except ImportError:
        return None
    return ortx


def register_pyops() -> bool:
    """Define the two PyOps (once); False if onnxruntime-extensions is not installed."""
    ortx = _ext()
    if ortx is None:
        return False
    if getattr(register_pyops, "done", False):
        return True
    f = ortx.PyCustomOpDef.dt_float
    s = ortx.PyCustomOpDef.dt_string

    @ortx.onnx_op(op_type="MmAttention", inputs=[f, f, f, f], outputs=[f])
    def mm_attention(q, kt, v, mask):  # type: ignore[no-untyped-def]
        # q (B,H,Lq,D), kt (B,H,D,Lk) as the graph's scores MatMul takes it, v (B,H,Lk,Dv),
        # mask: additive, broadcast to (B,H,Lq,Lk); q and kt carry the scale already
        return attention(q, kt.swapaxes(-1, -2), v, attn_mask=mask, scale=1.0)

    @ortx.onnx_op(
        op_type="MmConv",
        inputs=[f, f, f],
        outputs=[f],
        attrs={"key": s, "strides": s, "pads": s, "group": s, "relu": s},
    )
    def mm_conv(x, w, b, key, strides, pads, group, relu):  # type: ignore[no-untyped-def]
        conv = _CONVS.get(key)
        if conv is None:
            p = [int(v) for v in pads.split(",")]  # ONNX [top, left, bottom, right]
            conv = _CONVS[key] = Conv2d(
                w,
                b,
                stride=tuple(int(v) for v in strides.split(",")),
                padding=(p[0], p[1], p[2], p[3]),
                groups=int(group),
                activation="relu" if relu == "1" else None,
            )
        return conv(x)

    register_pyops.done = True  # type: ignore[attr-defined]
    return True


def pyop_options(threads: int) -> ort.SessionOptions:
    so = ort_options(threads)
    ortx = _ext()
    so.register_custom_ops_library(ortx.get_library_path())
    return so


def pyop_attention_model() -> bytes:
    dims = {
        "q": ["b", "h", "lq", "d"],
        "kt": ["b", "h", "d", "lk"],
        "v": ["b", "h", "lk", "dv"],
        "mask": ["mb", "mh", "lq", "lk"],
    }
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in dims.items()]
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    node = helper.make_node("MmAttention", list(dims), ["o"], domain="ai.onnx.contrib", name="att")
    g = helper.make_graph([node], "pyop_attention", ins, [out])
    ops = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    return helper.make_model(g, opset_imports=ops).SerializeToString()


def part_micro(own_bundle: Path, threads: int, rounds: int) -> dict[tuple[str, int], float]:
    """Prints the tables; returns (shape label or "convs", batch) -> ORT time / mmfast time."""
    ratios: dict[tuple[str, int], float] = {}
    rng = np.random.default_rng(0)
    have_ext = register_pyops()
    print("\n## Kernels against ORT's nodes, on the pipelines' shapes (ms per call, medians)")
    print("\nConvolutions of the own captioner's encoder (Conv + fused Relu where the graph has")
    print("one; ORT: a one-node model, ORT_ENABLE_ALL, so NCHWc where ORT picks it):\n")
    print("| conv | N | ORT ms | mmfast ms | ORT / mmfast |")
    print("|---|---|---|---|---|")
    totals: dict[int, list[float]] = {1: [0.0, 0.0], 8: [0.0, 0.0]}
    for c in conv_layers(own_bundle / "encoder.onnx"):
        sess = ort.InferenceSession(ort_conv_model(c), ort_options(threads))
        conv = Conv2d(
            c["w"],
            c["b"],
            stride=c["stride"],
            padding=c["pads"],
            groups=c["group"],
            activation="relu" if c["relu"] else None,
        )
        m, cg, kh, kw = c["w"].shape
        label = f"{kh}x{kw}/{c['stride'][0]} {cg * c['group']}->{m} @{c['chw'][1]}" + (
            " +relu" if c["relu"] else ""
        )
        for n in (1, 8):
            x = rng.standard_normal((n, *c["chw"])).astype(np.float32)
            want = sess.run(None, {"x": x})[0]
            got = conv(x)
            err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
            assert err < 1e-4, f"{label}: mmfast differs from ORT by {err:.2e} (relative)"
            t = interleaved(
                {"ort": lambda s=sess, x=x: s.run(None, {"x": x}), "mm": lambda x=x: conv(x)},
                rounds,
                20.0,
            )
            totals[n][0] += t["ort"]
            totals[n][1] += t["mm"]
            print(f"| {label} | {n} | {t['ort']:.4f} | {t['mm']:.4f} | {t['ort'] / t['mm']:.2f}x |")
    for n, (to, tm) in totals.items():
        ratios["convs", n] = to / tm
        print(f"| **all 10 convs** | {n} | {to:.3f} | {tm:.3f} | {to / tm:.2f}x |")

    print("\nAttention cores (ORT: Transpose, MatMul, Mul, Softmax, MatMul as in the exported")
    print("graphs; mmfast direct; mmfast behind a PyOp, i.e. what the custom-op route pays):\n")
    print(
        "| attention | B | H | Lq | Lk | D | ORT ms | mmfast ms | PyOp+mmfast ms | "
        "ORT / mmfast | ORT / PyOp |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    shapes = [
        ("ViT-B self", 12, 197, 197, 64),
        ("GPT-2 cross (step)", 12, 1, 197, 64),
        ("own cross (step)", 4, 1, 64, 48),
    ]
    for label, h, lq, lk, d in shapes:
        scale = 1.0 / np.sqrt(d)
        sess = ort.InferenceSession(ort_attention_model(scale), ort_options(threads))
        pyop = (
            ort.InferenceSession(pyop_attention_model(), pyop_options(threads))
            if have_ext
            else None
        )
        for b in (1, 8):
            q = rng.standard_normal((b, h, lq, d)).astype(np.float32)
            k = rng.standard_normal((b, h, lk, d)).astype(np.float32)
            v = rng.standard_normal((b, h, lk, d)).astype(np.float32)
            want = sess.run(None, {"q": q, "k": k, "v": v})[0]
            got = attention(q, k, v, scale=scale)
            assert np.abs(got - want).max() < 1e-4, label
            fns: dict[str, Callable[[], object]] = {
                "ort": lambda s=sess, q=q, k=k, v=v: s.run(None, {"q": q, "k": k, "v": v}),
                "mm": lambda q=q, k=k, v=v: attention(q, k, v, scale=scale),
            }
            if pyop is not None:
                qs, kts = q * np.float32(scale), np.ascontiguousarray(k.swapaxes(-1, -2))
                mask = np.zeros((1, 1, lq, lk), np.float32)
                feeds = {"q": qs, "kt": kts, "v": v, "mask": mask}
                got_p = pyop.run(None, feeds)[0]
                assert np.abs(got_p - want).max() < 1e-4, f"{label} (PyOp)"
                fns["pyop"] = lambda p=pyop, f=feeds: p.run(None, f)
            t = interleaved(fns, rounds, 20.0)
            tp = t.get("pyop", float("nan"))
            ratios[label, b] = t["ort"] / t["mm"]
            print(
                f"| {label} | {b} | {h} | {lq} | {lk} | {d} | {t['ort']:.4f} | {t['mm']:.4f} | "
                f"{tp:.4f} | {t['ort'] / t['mm']:.2f}x | {t['ort'] / tp:.2f}x |",
                flush=True,
            )

    return ratios


# ---- part 3: the custom-op route end to end ----------------------------------------------------


def replace_convs(model: onnx.ModelProto) -> int:
    """Every Conv (and a Relu that is its only user) -> MmConv; returns how many."""
    g = model.graph
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    drop, new_nodes, count = set(), [], 0
    for n in g.node:
        if n.op_type != "Conv":
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if tuple(at.get("dilations", [1, 1])) != (1, 1):
            raise ValueError(f"{n.name}: this benchmark's MmConv takes undilated convs only")
        inputs = list(n.input)
        if len(inputs) < 3 or not inputs[2]:  # MmConv has a fixed arity: a zero bias
            w = next(i for i in g.initializer if i.name == inputs[1])
            zero = numpy_helper.from_array(np.zeros(w.dims[0], np.float32), f"{n.name}.zero_bias")
            g.initializer.append(zero)
            inputs = [inputs[0], inputs[1], zero.name]
        users = cons.get(n.output[0], [])
        relu = len(users) == 1 and users[0].op_type == "Relu"
        out = users[0].output[0] if relu else n.output[0]
        if relu:
            drop.add(users[0].name)
        drop.add(n.name)
        new_nodes.append(
            (
                n.name,
                helper.make_node(
                    "MmConv",
                    inputs,
                    [out],
                    domain="ai.onnx.contrib",
                    name=f"mm_{n.name}",
                    key=n.name,
                    strides=",".join(str(s) for s in at.get("strides", [1, 1])),
                    pads=",".join(str(p) for p in at.get("pads", [0, 0, 0, 0])),
                    group=str(at.get("group", 1)),
                    relu="1" if relu else "0",
                ),
            )
        )
        count += 1
    by_name = dict(new_nodes)
    nodes = []
    for n in g.node:
        if n.name in by_name:
            nodes.append(by_name[n.name])
        elif n.name not in drop:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    return count


def replace_attention(model: onnx.ModelProto) -> int:
    """Each self-attention core the exporter wrote as MatMul(q, k^T) -> Add(mask) -> Softmax
    [-> IsNaN/Where] -> MatMul(p, v) -> MmAttention(q, k^T, v, mask); returns how many."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    drop, repl = set(), {}
    for a in attention_nodes(model):
        nodes = {nm: n for n in g.node for nm in [n.name] if nm in a["nodes"]}
        mms = [n for n in nodes.values() if n.op_type == "MatMul"]
        adds = [n for n in nodes.values() if n.op_type == "Add"]
        if len(mms) != 2 or len(adds) != 1:
            continue
        pv = next(n for n in mms if n.input[0] not in prod or prod[n.input[0]].name in nodes)
        qk = next(n for n in mms if n is not pv)
        add = adds[0]
        mask = next(i for i in add.input if i != qk.output[0])
        node = helper.make_node(
            "MmAttention",
            [qk.input[0], qk.input[1], pv.input[1], mask],
            [pv.output[0]],
            domain="ai.onnx.contrib",
            name=f"mm_{a['softmax']}",
        )
        drop |= set(nodes)
        repl[pv.name] = node
    kept = []
    for n in g.node:
        if n.name in repl:
            kept.append(repl[n.name])
        elif n.name not in drop:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    model.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    return len(repl)


def routed_captioner(bundle: Path, threads: int, surgery: Callable[[onnx.ModelProto], int]):
    """A Captioner whose encoder session runs a copy of encoder.onnx with `surgery` applied."""
    cap = Captioner.load(bundle, threads=threads)
    model = onnx.load(str(bundle / "encoder.onnx"))
    n = surgery(model)
    sess = ort.InferenceSession(model.SerializeToString(), pyop_options(threads))
    cap.sessions["encoder.onnx"]._sess = sess
    return cap, n


def part_route(bundles: dict[str, Path], images, threads: int, rounds: int) -> None:
    if not register_pyops():
        print("\n(onnxruntime-extensions is not installed: the route part is skipped)")
        return
    print("\n## The custom-op route end to end (greedy, 20 tokens; call ms, medians)")
    print(
        "| model | replaced | batch | plain encoder ms | routed encoder ms | plain call ms | "
        "routed call ms | call speed-up | tokens | encoder max abs diff (rel) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, surgery, what in (
        ("own", replace_convs, "Conv(+Relu)"),
        ("hf", replace_attention, "self-attention"),
    ):
        plain = Captioner.load(bundles[name], threads=threads)
        routed, n = routed_captioner(bundles[name], threads, surgery)
        for b in (1, 8):
            ims = images[:b]
            px = plain.pixels(ims)
            e_plain, e_routed = plain.encode(px), routed.encode(px)
            diffs = []
            for key, a in e_plain.items():
                if a.size == 0:  # e.g. an empty self-attention cache
                    continue
                d = float(np.abs(a - e_routed[key]).max())
                diffs.append((d, d / (float(np.abs(a).max()) + 1e-30)))
            dmax = max(diffs)
            tok_p = [c.tokens for c in plain.caption(ims, beam_size=1, max_new_tokens=20)]
            tok_r = [c.tokens for c in routed.caption(ims, beam_size=1, max_new_tokens=20)]
            same = "identical" if tok_p == tok_r else "DIFFER"
            enc = interleaved(
                {
                    "plain": lambda px=px: plain.encode(px),
                    "routed": lambda px=px: routed.encode(px),
                },
                rounds,
                50.0,
            )
            call = interleaved(
                {
                    "plain": lambda ims=ims: plain.caption(ims, beam_size=1, max_new_tokens=20),
                    "routed": lambda ims=ims: routed.caption(ims, beam_size=1, max_new_tokens=20),
                },
                rounds,
                50.0,
            )
            print(
                f"| {name} | {n} {what} | {b} | {enc['plain']:.2f} | {enc['routed']:.2f} | "
                f"{call['plain']:.2f} | {call['routed']:.2f} | "
                f"{call['plain'] / call['routed']:.3f}x | {same} | {dmax[0]:.2e} ({dmax[1]:.1e}) |",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mmfast-inpipeline"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--hf-size",
        default="base",
        choices=["tiny", "small", "base"],
        help="ViT-GPT-2 size (the microbenchmark's attention shapes are base's: other sizes "
        "are for a quick check of the script, their bound rows mix shapes)",
    )
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per comparison")
    p.add_argument("--parts", default="profile,micro,route")
    a = p.parse_args()
    alloc = tune_allocator()
    _C.set_num_threads(a.threads)
    work = Path(a.workdir)
    bundles = {
        "own": build_own(work / "own"),
        "hf": build_hf(work / f"vit-gpt2-{a.hf_size}", a.hf_size),
    }
    try:
        import onnxruntime_extensions as ortx

        ext = f"onnxruntime-extensions {ortx.__version__}"
    except ImportError:
        ext = "no onnxruntime-extensions"
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(
        f"# bench_inpipeline  {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
        f"{platform.processor() or platform.machine()}; {a.threads} thread(s), CPUs {affinity}; "
        f"mmfast {mmfast.__version__}, onnxruntime {ort.__version__}, {ext}; {alloc}",
        flush=True,
    )
    images = photos(8)
    parts = set(a.parts.split(","))
    shares, ratios = {}, {}
    if "profile" in parts:
        caps = {k: Captioner.load(b, threads=a.threads) for k, b in bundles.items()}
        # image positions the cross-attention reads: the key axis of the step's cross K input
        regions = {
            k: next(
                int(i.shape[-2])
                for i in cap.sessions["decoder_step.onnx"].inner.get_inputs()
                if i.name.startswith("cross_k")
            )
            for k, cap in caps.items()
        }
        shares = part_profile(caps, images, a.threads, regions, a.rounds)
        del caps
    if "micro" in parts:
        ratios = part_micro(bundles["own"], a.threads, a.rounds)
    if shares and ratios:
        part_bound(shares, ratios)
    if "route" in parts:
        part_route(bundles, images, a.threads, a.rounds)


if __name__ == "__main__":
    main()
