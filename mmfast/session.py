"""ONNX Runtime sessions as the runtime uses them: device choice with a said-aloud CPU
fallback, deliberate threading, graph optimisation with a reusable optimised model.

Threading: on small machines ORT's intra-op threads spin between runs and fight the Python
decoding loop (measured on the 2-core dev machine: turning spinning off halved beam-search
time of a peer's exported captioner), so spinning is off by default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["Session", "resolve_providers"]

log = logging.getLogger("mmfast")


def resolve_providers(device: str) -> list[str]:
    """ORT providers for `device` ("cpu" or "cuda"); CUDA falls back to CPU with a warning."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    log.warning(
        "device='cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
        "(available: %s); running on CPU. Install the gpu extra (onnxruntime-gpu).",
        ", ".join(available),
    )
    return ["CPUExecutionProvider"]


def _writable_dir(path: Path) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


class Session:
    """One ONNX graph, ready to run. Thread-safe: ORT sessions may be run concurrently.

    model: path of the .onnx file. threads: intra-op threads (None: ORT's default, all cores).
    optimized_dir: if given, the graph optimised for this machine is saved there on first load
    and reused afterwards (skips optimisation at start-up).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        optimized_dir: str | Path | None = None,
        spinning: bool = False,
    ) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {threads!r}")
        self.path = Path(model)
        self.providers = resolve_providers(device)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.log_severity_level = 3
        load_path = self.path
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_dir is not None:
            tag = "cuda" if self.providers[0].startswith("CUDA") else "cpu"
            opt = Path(optimized_dir) / f"{self.path.stem}.{tag}.opt.onnx"
            if opt.is_file() and opt.stat().st_mtime >= self.path.stat().st_mtime:
                load_path = opt
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            elif _writable_dir(opt.parent):
                so.optimized_model_filepath = str(opt)
            # else: a read-only bundle (a container image, say): optimise at every start
        self._sess = ort.InferenceSession(str(load_path), so, providers=self.providers)
        self.device = "cuda" if self._sess.get_providers()[0].startswith("CUDA") else "cpu"
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Run with numpy inputs; returns the outputs (all, or those named) as numpy arrays."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"feeds: missing input(s) {missing} for {self.path.name}")
        result: list[np.ndarray] = self._sess.run(list(outputs or self.output_names), dict(feeds))
        return result

    @property
    def inner(self) -> Any:
        """The underlying onnxruntime.InferenceSession (for IO binding)."""
        return self._sess
