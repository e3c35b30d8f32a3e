"""Export a Hugging Face model directory to an mmfast bundle (``mmfast export MODEL_DIR``).

The generic half: read and check the directory (:mod:`.model_dir`), pick the adapter of its
architecture (:data:`ADAPTERS`, one module per model family: which graphs to cut, what state
the step carries), export and validate the graphs, check the step against the Hugging Face
model's own logits, decode real images through the finished bundle with mmfast's runtime and
compare with ``model.generate``, and only then move the bundle into place: a failed export
leaves no bundle behind (it is built in a hidden directory beside ``out``).

An adapter is a module with: ``load(d) -> model`` (eval mode; ValueError/ModelDirError for
a variant it does not cut), ``specs(model, image_size) -> (graphs, state_updates)`` (the
encoder's and the step's GraphSpecs; the step takes ``tokens`` and the encoder's outputs and
gives ``logits``, ``attention`` and the updated state), ``vocab_size(model)``,
``max_new_tokens(model)``, ``reference_logits(model, pixels, prefix) -> (B, T, V)`` (the
Hugging Face model's own forward), ``describe(d) -> dict`` and ``ID_CONFIGS`` (sub-configs
holding token ids). Optionally ``generation_settings(d, model) -> dict``: the generation
settings its ``generate`` runs with, for a model whose ``generate`` does not read
generation_config.json + the config's ids (BLIP: the text decoder's own, ending at [SEP]).

Validation, in the manifest's ``validation`` report:
- each graph, ONNX Runtime against the PyTorch module it was exported from (batch 1 and 3);
- ``reference``: the exported modules, stepped token by token, against the Hugging Face
  model's logits for the same prefix (per step, max abs error);
- ``generate``: the bundle's greedy captions against ``model.generate`` (tokens identical).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mmfast.bundle import write_manifest
from mmfast.generation import GenerationConfig, cut_at_eos
from mmfast.preprocess import PreprocessConfig, preprocess_batch
from mmfast.tokenizer import SpecialTokens

from ..onnx_export import (
    ExportValidationError,
    OutputValueError,
    export_graphs,
)
from . import blip, blip_itm, blip_vqa, clip, common, vilt, vision_encoder_decoder
from .common import provenance, save_tokenizer, staging
from .model_dir import ModelDir, ModelDirError, read_model_dir

__all__ = ["ADAPTERS", "TokenMismatchError", "UnsupportedArchitectureError", "export_hf"]

# config.json's architecture -> (mmfast task, adapter module, bundle kind)
ADAPTERS: dict[str, tuple[str, ModuleType, str]] = {
    "VisionEncoderDecoderModel": ("caption", vision_encoder_decoder, "hf_vision_encoder_decoder"),
    "BlipForConditionalGeneration": ("caption", blip, "hf_blip"),
    "CLIPModel": ("retrieval", clip, "hf_clip"),
    "SiglipModel": ("retrieval", clip, "hf_siglip"),
    "BlipForImageTextRetrieval": ("rerank", blip_itm, "hf_blip_itm"),
    "ViltForQuestionAnswering": ("vqa", vilt, "hf_vilt"),
    "BlipForQuestionAnswering": ("vqa", blip_vqa, "hf_blip_vqa"),
}
# model_type -> architecture, for a config.json without "architectures"
_BY_MODEL_TYPE = {
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
    "blip": "BlipForConditionalGeneration",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "vilt": "ViltForQuestionAnswering",
}


class UnsupportedArchitectureError(ValueError):
    """The model directory holds an architecture no adapter exports."""


class TokenMismatchError(ExportValidationError):
    """The exported bundle's captions differ from the Hugging Face model's ``generate``."""


def _architecture(d: ModelDir, task: str | None) -> str:
    arch = d.architecture or _BY_MODEL_TYPE.get(str(d.config.get("model_type")), "")
    supported = ", ".join(ADAPTERS)
    if arch not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"{d.path}: architecture {arch or d.config.get('model_type')!r} is not supported "
            f"(supported: {supported})"
        )
    if task is not None and ADAPTERS[arch][0] != task:
        raise UnsupportedArchitectureError(
            f"{d.path}: {arch} is exported as a {ADAPTERS[arch][0]!r} model, not {task!r}"
        )
    return arch


def _generation(d: ModelDir, model: torch.nn.Module, adapter: ModuleType) -> GenerationConfig:
    """generation_config.json, with the model config's ids where it lacks them (as
    ``generate`` does; the adapter names the sub-configs to look in, e.g. "decoder"), or the
    adapter's own generation_settings where it has them."""
    if hasattr(adapter, "generation_settings"):
        return GenerationConfig.from_hf(adapter.generation_settings(d, model))
    merged: dict[str, Any] = {}
    subs = [d.config.get(k, {}) for k in adapter.ID_CONFIGS]
    for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
        for source in (d.generation, d.config, *subs):
            if source.get(key) is not None:
                merged[key] = source[key]
                break
    # what generate() runs with: the loaded generation config's settings that differ from
    # transformers' defaults (its full dict carries version-specific switches)
    gen = dict(model.generation_config.to_diff_dict())
    gen.update(merged)
    # no length set: 20 new tokens (from_hf's default), in 4.57 as in 5.x (4.57 adds the
    # decoder's start token to the default max_length of 20; tested under both)
    return GenerationConfig.from_hf(gen)


def _check_reference(
    adapter: ModuleType,
    model: torch.nn.Module,
    graphs: list[Any],
    updates: dict[str, str],
    pixels: torch.Tensor,
    steps: int,
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """The exported encoder + step modules, stepped token by token, against the Hugging Face
    model's logits for the same prefix; OutputValueError beyond atol + rtol * |reference|."""
    vocab = adapter.vocab_size(model)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (len(pixels), steps), generator=gen)
    ref = adapter.reference_logits(model, pixels, prefix)
    errors = []
    with torch.no_grad():
        state = list(graphs[0].module(pixels))
        n = len(updates)
        for t in range(steps):
            out = graphs[1].module(prefix[:, t], *state)
            state[:n] = out[2:]
            err = (out[0].double() - ref[:, t].double()).abs()
            bad = err > atol + rtol * ref[:, t].double().abs()
            if bad.any():
                raise OutputValueError(
                    f"decoder_step: step {t} logits differ from the Hugging Face model's by up "
                    f"to {err.max().item():.3g} (atol={atol}, rtol={rtol})"
                )
            errors.append(float(err.max()))
    return {"steps": steps, "max_abs_err_per_step": errors}


def export_hf(
    model_dir: str | Path, out: str | Path, *, task: str | None = None, check_images: int = 4
) -> dict[str, Any]:
    """Export a Hugging Face model directory to a bundle at `out`; returns the manifest.

    ModelDirError for a missing or unreadable file, UnsupportedArchitectureError for an
    architecture no adapter exports, ExportValidationError when ONNX Runtime, the Hugging Face
    model and the bundle disagree. Nothing is left at `out` unless the export succeeds."""
    d = read_model_dir(model_dir)
    arch = _architecture(d, task)
    task_name, adapter, kind = ADAPTERS[arch]
    out = Path(out)
    if task_name != "caption":
        # one module does the whole export of a retrieval or re-ranking model: its graphs
        # share nothing with a captioner's encoder + step (adapter.export_bundle's docstring)
        with staging(out) as tmp:
            adapter.export_bundle(d, tmp, arch=arch, kind=kind, check_images=check_images)
        return json.loads((out / "manifest.json").read_text())
    preprocess = PreprocessConfig.from_hf(d.processor)
    with staging(out) as tmp:
        model = adapter.load(d)
        vocab_size = adapter.vocab_size(model)
        n_tokens, cleanup, tok_ids = save_tokenizer(d, tmp, vocab_size)
        generation = _generation(d, model, adapter)
        if not generation.eos_token_id:  # a caption would always run to the length limit
            raise ModelDirError(f"{d.path}: no eos_token_id in the generation or model config")
        for name, i in (
            ("decoder_start_token_id", generation.decoder_start_token_id),
            *(("eos_token_id", e) for e in generation.eos_token_id),
        ):
            if not 0 <= i < n_tokens:
                raise ModelDirError(
                    f"{d.path}: {name} {i} is outside the tokenizer's {n_tokens} tokens"
                )
        graphs, updates = adapter.specs(model, preprocess.size)
        report, sections = export_graphs(graphs, tmp)
        images = common.check_images(check_images, preprocess.size)
        pixels = torch.from_numpy(preprocess_batch(images, preprocess))
        step_spec = graphs[1]
        report["reference"] = _check_reference(
            adapter, model, graphs, updates, pixels, 6, step_spec.atol, step_spec.rtol
        )
        eos = generation.eos_token_id[0]
        special = SpecialTokens(
            pad=generation.pad_token_id if generation.pad_token_id is not None else eos,
            bos=generation.decoder_start_token_id,
            eos=eos,
            unk=tok_ids.get("unk", eos),
        )
        manifest: dict[str, Any] = {
            "task": task_name,
            "kind": kind,
            "config": {
                "architecture": arch,
                **adapter.describe(d),
                "decoder_vocab_size": vocab_size,
            },
            **common.bundle_sections(sections, preprocess, cleanup, special),
            "decoder": {"state_updates": updates, "max_len": adapter.max_new_tokens(model)},
            "generation": asdict(generation),
            "validation": report,
            "provenance": provenance(d),
        }
        write_manifest(tmp, manifest)
        report["generate"] = _check_generate(tmp, model, images, pixels, generation)
        manifest["validation"] = report
        write_manifest(tmp, manifest)
    return json.loads((out / "manifest.json").read_text())


def _check_generate(
    bundle: Path,
    model: torch.nn.Module,
    images: list[np.ndarray],
    pixels: torch.Tensor,
    generation: GenerationConfig,
) -> dict[str, Any]:
    """The bundle's greedy captions of `images` against ``model.generate``: tokens identical
    (TokenMismatchError naming the first image that differs)."""
    from mmfast.captioner import Captioner

    new = min(20, generation.max_length - 1)
    cap = Captioner.load(bundle, threads=1)
    got = cap.caption(images, beam_size=1, max_new_tokens=new)
    with torch.no_grad():
        ref = model.generate(pixel_values=pixels, num_beams=1, do_sample=False, max_new_tokens=new)
    for i, (c, row) in enumerate(zip(got, ref.tolist(), strict=True)):
        want = cut_at_eos(row[1:], generation.eos_token_id)
        if c.tokens != want:
            raise TokenMismatchError(
                f"greedy caption of check image {i}: the bundle gives {c.tokens}, "
                f"model.generate gives {want}"
            )
    return {"images": len(images), "max_new_tokens": new, "greedy_tokens_identical": True}
