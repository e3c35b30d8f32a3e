"""`mmfast info`: what this installation is and what it will use on this machine."""

from __future__ import annotations

import platform
import sys
from typing import Any

from . import _C
from ._cuda import cuda_status
from ._version import __version__

__all__ = ["info", "info_dict"]


def info_dict() -> dict[str, Any]:
    """Version, CPU features, kernel variants (compiled / runnable / active), CUDA, ORT."""
    import onnxruntime as ort

    return {
        "mmfast": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "compiler": _C.compiler,
        "cpu_features": dict(_C.cpu_features()),
        "kernel_variants_compiled": list(_C.compiled_variants()),
        "kernel_variants_runnable": list(_C.runnable_variants()),
        "kernel_variant_active": _C.active_variant(),
        "num_threads": _C.get_num_threads(),
        "cuda": cuda_status(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": list(ort.get_available_providers()),
    }


def _format(d: dict[str, Any]) -> str:
    feats = d["cpu_features"]
    cuda = d["cuda"]
    if not cuda["built"]:
        cuda_line = "not built"
    elif cuda["available"]:
        cuda_line = f"built, {cuda['device_count']} device(s): {cuda['device']}"
    else:
        cuda_line = f"built, unavailable here ({cuda['error']})"
    lines = [
        f"mmfast {d['mmfast']}  (Python {d['python']}, {d['platform']})",
        f"  compiler            {d['compiler']}",
        "  CPU features        " + (" ".join(k for k, v in feats.items() if v) or "none detected"),
        "  kernels compiled    " + ", ".join(d["kernel_variants_compiled"]),
        "  kernels runnable    " + ", ".join(d["kernel_variants_runnable"]),
        f"  kernel active       {d['kernel_variant_active']}",
        f"  kernel threads      {d['num_threads']}",
        f"  CUDA kernels        {cuda_line}",
        f"  onnxruntime         {d['onnxruntime']}  providers: "
        + ", ".join(d["onnxruntime_providers"]),
    ]
    return "\n".join(lines)


def info(print_result: bool = True) -> dict[str, Any]:
    """Print (unless `print_result` is False) and return what :func:`info_dict` reports."""
    d = info_dict()
    if print_result:
        print(_format(d))
    return d
