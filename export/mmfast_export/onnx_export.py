"""ONNX export of a trained run into a bundle, with validation against PyTorch.

Each model kind declares its graphs as small specs (wrapper module, inputs, outputs, dynamic
axes, tolerance) in :data:`SPECS`; :func:`export_run` exports them, checks ONNX Runtime against
PyTorch on dummy and real inputs (a named error per kind of mismatch), and writes the bundle's
manifest. Every model family of :data:`mmfast_export.runs.MODELS` is declared:

- ``caption_lstm``: ``encoder.onnx`` computes everything per image (initial h, c, the regions
  and the attention projection W_a·regions) once; ``decoder_step.onnx`` is one step with
  explicit state.
- ``caption_transformer``: ``encoder.onnx`` computes every layer's cross-attention keys and
  values once; ``decoder_step.onnx`` is one step over a fixed-size self-attention KV cache.
- ``retrieval``: ``image_tower.onnx`` (embedding, and the regions projected for the
  re-ranker), ``text_tower.onnx``, and ``reranker.onnx`` when the model has one.
- ``vqa``, ``vqa_transformer``: ``image_encoder.onnx`` (regions) and ``answer_head.onnx``
  (question -> answer logits, attention); the same interface for both families (the runtime
  tells them apart by the manifest's ``kind`` only).
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfast.bundle import write_manifest
from mmfast.tokenizer import WORD_LEVEL

from .runs import load_run

__all__ = [
    "ExportValidationError",
    "GraphSpec",
    "UnsupportedModelError",
    "export_graphs",
    "export_run",
]

OPSET = 18


class UnsupportedModelError(ValueError):
    """The run's model kind declares no graphs to export."""


class ExportValidationError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch on an exported graph."""


class OutputNameError(ExportValidationError):
    pass


class OutputShapeError(ExportValidationError):
    pass


class OutputValueError(ExportValidationError):
    pass


@dataclass
class GraphSpec:
    """One exported graph: a module whose forward takes and returns plain tensors."""

    file: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: symbolic name}
    # example(batch) -> the inputs at that batch size (export traces at 2, validation at 1, 3)
    example: Callable[[int], tuple[torch.Tensor, ...]] = field(repr=False)
    atol: float = 1e-4
    rtol: float = 1e-4
    notes: str = ""


# ----------------------------------------------------------------------- caption_lstm


class _Wrapper(nn.Module):
    """A graph to export: wraps the trained model `m` so forward takes and returns tensors."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m


class _LSTMEncoder(_Wrapper):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.m.encode(images)
        return s["h"], s["c"], s["regions"], s["att_proj"]


class _LSTMStep(_Wrapper):
    def forward(
        self,
        tokens: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        regions: torch.Tensor,
        att_proj: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        state = {"h": h, "c": c, "regions": regions, "att_proj": att_proj}
        logits, new, alpha = self.m.step(tokens, state)
        return logits, new["h"], new["c"], alpha


def _lstm_specs(model: nn.Module, image_size: int) -> list[GraphSpec]:
    state_names = ["h", "c", "regions", "att_proj"]

    def enc_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    def step_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            s = model.encode(torch.randn(b, 3, image_size, image_size))
        return (
            torch.randint(3, model.cfg.vocab_size, (b,)),
            s["h"],
            s["c"],
            s["regions"],
            s["att_proj"],
        )

    batch = {0: "batch"}
    return [
        GraphSpec(
            "encoder.onnx",
            _LSTMEncoder(model),
            ["images"],
            state_names,
            {"images": batch},
            example=enc_example,
        ),
        GraphSpec(
            "decoder_step.onnx",
            _LSTMStep(model),
            ["tokens", *state_names],
            ["logits", "h_out", "c_out", "attention"],
            {n: batch for n in ["tokens", *state_names]},
            example=step_example,
        ),
    ]


# ----------------------------------------------------------------- caption_transformer

_TF_STATE = ["cross_k", "cross_v", "self_k", "self_v", "pos"]


class _TFEncoder(_Wrapper):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.m.encode(images)
        return tuple(s[n] for n in _TF_STATE)


class _TFStep(_Wrapper):
    def forward(
        self,
        tokens: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        pos: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        state = {
            "cross_k": cross_k,
            "cross_v": cross_v,
            "self_k": self_k,
            "self_v": self_v,
            "pos": pos,
        }
        logits, new, attn = self.m.step(tokens, state)
        return logits, new["self_k"], new["self_v"], new["pos"], attn


def _tf_specs(model: nn.Module, image_size: int) -> list[GraphSpec]:
    def enc_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    def step_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            s = model.encode(torch.randn(b, 3, image_size, image_size))
            tok = torch.randint(3, model.cfg.vocab_size, (b,))
            _, s, _ = model.step(tok, s)  # a non-empty cache: position 1
        return (torch.randint(3, model.cfg.vocab_size, (b,)), *(s[n] for n in _TF_STATE))

    batch = {0: "batch"}
    return [
        GraphSpec(
            "encoder.onnx",
            _TFEncoder(model),
            ["images"],
            _TF_STATE,
            {"images": batch},
            example=enc_example,
        ),
        GraphSpec(
            "decoder_step.onnx",
            _TFStep(model),
            ["tokens", *_TF_STATE],
            ["logits", "self_k_out", "self_v_out", "pos_out", "attention"],
            {n: batch for n in ["tokens", *_TF_STATE]},
            example=step_example,
            notes="KV cache of max_len slots written at pos; pos advances by one",
        ),
    ]


# ------------------------------------------------------------------------- retrieval


class _ImageTower(_Wrapper):
    """images -> unit embedding (B, E) and, if the model re-ranks, the regions already projected
    for the re-ranker (B, N, D) — per-image work done once, at indexing time."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb, regions = self.m.encode_image(images)
        if self.m.reranker is None:
            return (emb,)
        return emb, self.m.region_proj(regions)


class _TextTower(_Wrapper):
    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb, feats, mask = self.m.encode_text(tokens)
        return emb, feats, mask.to(torch.float32)


class _Reranker(_Wrapper):
    def forward(
        self, text_feats: torch.Tensor, text_mask: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        assert self.m.reranker is not None
        return self.m.reranker(text_feats, text_mask > 0.5, regions)


def _tokens_example(model: nn.Module, b: int, t: int = 9) -> torch.Tensor:
    tok = torch.randint(4, model.cfg.vocab_size, (b, t))
    tok[:, 0] = 1
    for i in range(b):  # ragged lengths, padded with 0
        tok[i, t - 1 - (i % 3) :] = 0
    return tok


def _retrieval_specs(model: nn.Module, image_size: int) -> list[GraphSpec]:
    rerank = model.reranker is not None

    def img_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    def txt_example(b: int) -> tuple[torch.Tensor, ...]:
        return (_tokens_example(model, b, 9 + b),)

    def rr_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            _, feats, mask = model.encode_text(_tokens_example(model, b, 8 + b))
            _, regions = model.encode_image(torch.randn(b, 3, image_size, image_size))
            return feats, mask.to(torch.float32), model.region_proj(regions)

    batch, text = {0: "batch"}, {0: "batch", 1: "tokens"}
    specs = [
        GraphSpec(
            "image_tower.onnx",
            _ImageTower(model),
            ["images"],
            ["image_embedding", "regions"] if rerank else ["image_embedding"],
            {"images": batch},
            example=img_example,
        ),
        GraphSpec(
            "text_tower.onnx",
            _TextTower(model),
            ["tokens"],
            ["text_embedding", "token_features", "token_mask"],
            {"tokens": text},
            example=txt_example,
        ),
    ]
    if rerank:
        specs.append(
            GraphSpec(
                "reranker.onnx",
                _Reranker(model),
                ["text_features", "text_mask", "regions"],
                ["score"],
                {"text_features": text, "text_mask": text, "regions": batch},
                example=rr_example,
            )
        )
    return specs


# ------------------------------------------------------------------------------- vqa


class _VQAImage(_Wrapper):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.m.encode_image(images)


class _VQAAnswer(_Wrapper):
    def forward(self, regions: torch.Tensor, questions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, att = self.m.answer(regions, questions)
        return logits, att


def _vqa_specs(model: nn.Module, image_size: int) -> list[GraphSpec]:
    def img_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    def ans_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            regions = model.encode_image(torch.randn(b, 3, image_size, image_size))
        return regions, _tokens_example(model, b, 7 + b)

    batch = {0: "batch"}
    return [
        GraphSpec(
            "image_encoder.onnx",
            _VQAImage(model),
            ["images"],
            ["regions"],
            {"images": batch},
            example=img_example,
        ),
        GraphSpec(
            "answer_head.onnx",
            _VQAAnswer(model),
            ["regions", "questions"],
            ["logits", "attention"],
            {"regions": batch, "questions": {0: "batch", 1: "tokens"}},
            example=ans_example,
        ),
    ]


SPECS: dict[str, Callable[[nn.Module, int], list[GraphSpec]]] = {
    "caption_lstm": _lstm_specs,
    "caption_transformer": _tf_specs,
    "retrieval": _retrieval_specs,
    "vqa": _vqa_specs,
    "vqa_transformer": _vqa_specs,  # the same graphs: encode_image, answer
}
# Step graph: state input -> the output that replaces it after a step (others are constant).
STATE_UPDATES = {
    "caption_lstm": {"h": "h_out", "c": "c_out"},
    "caption_transformer": {"self_k": "self_k_out", "self_v": "self_v_out", "pos": "pos_out"},
}


# ----------------------------------------------------------------------- export + checks


def _export_graph(spec: GraphSpec, path: Path) -> None:
    example = spec.example(2)
    dims = {}
    dynamic_shapes = []
    for name in spec.input_names:
        axes = spec.dynamic.get(name, {})
        shape = {}
        for ax, sym in axes.items():
            dims.setdefault(sym, torch.export.Dim(sym, min=1, max=4096))
            shape[ax] = dims[sym]
        dynamic_shapes.append(shape or None)
    # torch.export wants a forward(x, *state)'s trailing inputs as one nested tuple
    params = list(inspect.signature(spec.module.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        dynamic_shapes = [*dynamic_shapes[:fixed], tuple(dynamic_shapes[fixed:])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module,
            example,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=tuple(dynamic_shapes),
            external_data=False,
            verbose=False,
        )


def validate_graph(
    spec: GraphSpec, path: Path, cases: dict[str, tuple[torch.Tensor, ...]]
) -> dict[str, Any]:
    """Run ORT and PyTorch on each named input case; raise a named ExportValidationError on
    any mismatch, else return max abs/rel error per case and output."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got_names = [o.name for o in sess.get_outputs()]
    if got_names != spec.output_names:
        raise OutputNameError(f"{spec.file}: outputs {got_names} != {spec.output_names}")
    report: dict[str, Any] = {}
    for case, inputs in cases.items():
        feeds = {n: t.numpy() for n, t in zip(spec.input_names, inputs, strict=True)}
        got = sess.run(None, feeds)
        with torch.no_grad():
            res = spec.module(*inputs)
        want = [t.numpy() for t in (res if isinstance(res, tuple) else (res,))]
        report[case] = {}
        for name, g, w in zip(spec.output_names, got, want, strict=True):
            if g.shape != w.shape:
                raise OutputShapeError(
                    f"{spec.file}:{name}: shape {g.shape} != PyTorch {w.shape} ({case})"
                )
            err = np.abs(g.astype(np.float64) - w.astype(np.float64))
            bad = err > spec.atol + spec.rtol * np.abs(w)
            if bad.any():
                raise OutputValueError(
                    f"{spec.file}:{name}: {int(bad.sum())} values beyond atol={spec.atol}, "
                    f"rtol={spec.rtol} (max abs err {err.max():.3g}, {case})"
                )
            report[case][name] = {
                "max_abs_err": float(err.max()) if err.size else 0.0,
                "max_rel_err": float((err / (np.abs(w) + 1e-12)).max()) if err.size else 0.0,
            }
    return report


def export_graphs(specs: list[GraphSpec], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export each spec into `out` and validate it against PyTorch; returns the validation
    report and the manifest's ``graphs`` sections (file -> inputs, outputs, ...)."""
    torch.manual_seed(0)
    report: dict[str, Any] = {}
    graphs: dict[str, Any] = {}
    for spec in specs:
        path = out / spec.file
        _export_graph(spec, path)
        # dynamic batch: validated at another size than the export's example (2)
        report[spec.file] = validate_graph(
            spec, path, {f"batch{b}": spec.example(b) for b in (1, 3)}
        )
        graphs[spec.file] = {
            "inputs": spec.input_names,
            "outputs": spec.output_names,
            "dynamic": {k: {str(a): s for a, s in v.items()} for k, v in spec.dynamic.items()},
            "atol": spec.atol,
            "rtol": spec.rtol,
            "notes": spec.notes,
        }
    return report, graphs


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            cwd=Path(__file__).parent,
        )
        return r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def export_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Export a trained run to a bundle directory; returns the manifest."""
    run, out = Path(run_dir), Path(out_dir)
    model, cfg, _ = load_run(run)
    kind = cfg["model"]["kind"]
    if kind not in SPECS:
        raise UnsupportedModelError(
            f"{run}: no ONNX export for model kind {kind!r}; exportable kinds: " + ", ".join(SPECS)
        )
    image_size = int(cfg["preprocess"]["size"])
    specs = SPECS[kind](model, image_size)
    out.mkdir(parents=True, exist_ok=True)
    report, graphs = export_graphs(specs, out)
    shutil.copy(run / "vocab.txt", out / "vocab.txt")
    extra: dict[str, Any] = {}
    if cfg["task"] == "vqa":
        shutil.copy(run / "answers.txt", out / "answers.txt")
        extra["answers"] = "answers.txt"
    if kind == "retrieval":
        # fused re-ranking score = temperature scale * cosine + re-ranker score (as in training)
        extra["retrieval"] = {
            "logit_scale": float(model.temperature_scale().detach()),
            "rerank": model.reranker is not None,
            "max_len": int(model.cfg.max_len),
        }
    if cfg["task"] == "vqa":
        extra["vqa"] = {"max_len": int(model.cfg.max_len)}
    metrics = (
        json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    )
    manifest = {
        "task": cfg["task"],
        "kind": kind,
        "config": cfg["model"],
        "opset": OPSET,
        "graphs": graphs,
        "preprocess": cfg["preprocess"],
        "vocab": "vocab.txt",
        "special_tokens": asdict(WORD_LEVEL),  # our own models' word-level vocabulary
        "decoder": {
            "state_updates": STATE_UPDATES.get(kind, {}),
            "max_len": int(cfg["model"].get("max_len", 0)) or None,
        },
        **extra,
        "validation": report,
        "provenance": {
            "run": str(run.resolve()),
            "git_commit": _git_commit(),
            "train_args": cfg.get("train_args"),
            "metrics": metrics,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }
    write_manifest(out, manifest)
    return manifest
