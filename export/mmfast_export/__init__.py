"""mmfast_export: the PyTorch side of mmfast (data, models, training, export; needs torch).

import mmfast_export
mmfast_export.export("runs/caption", out="bundles/caption")          # an mmfast run
mmfast_export.export("models/vit-gpt2", out="bundles/vit-gpt2")     # a Hugging Face model
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["export"]


def export(
    model_or_dir: Any,
    out: str | Path,
    *,
    task: str | None = None,
    tokenizer: Any = None,
    image_processor: Any = None,
) -> dict[str, Any]:
    """Export to a validated bundle at `out`; returns its manifest.

    model_or_dir: a run directory of ``mmfast train``, a Hugging Face model directory
    (``save_pretrained``'s: config.json, weights, tokenizer, preprocessor_config.json,
    generation_config.json), or a Hugging Face model object with its `tokenizer` and
    `image_processor` (saved to a temporary directory, then exported as one).
    task: Hugging Face models only, the task to export for (default: from config.json).
    """
    from .hf.export import export_hf
    from .hf.model_dir import is_hf_model_dir

    if isinstance(model_or_dir, (str, Path)):
        if is_hf_model_dir(model_or_dir):
            return export_hf(model_or_dir, out, task=task)
        if task is not None:
            raise ValueError("task: only for Hugging Face model directories")
        from .onnx_export import export_run

        return export_run(model_or_dir, out)
    if not hasattr(model_or_dir, "save_pretrained"):
        raise TypeError(
            "model_or_dir: expected a directory path or a Hugging Face model, got "
            f"{type(model_or_dir).__name__}"
        )
    for name, part in (("tokenizer", tokenizer), ("image_processor", image_processor)):
        if part is None or not hasattr(part, "save_pretrained"):
            raise TypeError(f"{name}: a Hugging Face model needs its {name} to be exported")
    with tempfile.TemporaryDirectory(prefix="mmfast-export-") as tmp:
        model_or_dir.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        return export_hf(tmp, out, task=task)
