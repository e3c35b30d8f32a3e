"""Lazy access to the CUDA module (mmfast._C_cuda).

The CUDA kernels live in their own extension, linked with the static CUDA runtime, so neither
``import mmfast`` nor any CPU op loads it. It is imported on first use only; on a machine with
no GPU or driver it still imports and reports why CUDA is unavailable.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType
from typing import Any

from . import _C

__all__ = ["cuda_built", "cuda_kernels", "cuda_module", "cuda_status"]


def cuda_built() -> bool:
    """Whether this build of mmfast contains the CUDA kernels."""
    return bool(_C.cuda_built)


@lru_cache(maxsize=1)
def cuda_module() -> ModuleType:
    """The CUDA extension module; RuntimeError if this build has none."""
    if not cuda_built():
        raise RuntimeError(
            "this mmfast build has no CUDA kernels (built without nvcc or with MMFAST_CUDA=OFF)"
        )
    return importlib.import_module("mmfast._C_cuda")


def cuda_status() -> dict[str, Any]:
    """Whether CUDA kernels were built and can run here, and why not if they can't.

    Keys: built, available, device_count, runtime_version, driver_version, device, error.
    """
    if not cuda_built():
        return {
            "built": False,
            "available": False,
            "device_count": 0,
            "runtime_version": None,
            "driver_version": None,
            "device": None,
            "error": "built without CUDA",
        }
    s = cuda_module().status()
    return {
        "built": True,
        "available": s["device_count"] > 0 and not s["error"],
        "device_count": s["device_count"],
        "runtime_version": s["runtime_version"],
        "driver_version": s["driver_version"] or None,
        "device": (
            f"{s['device0_name']} (sm_{s['device0_capability'][0]}{s['device0_capability'][1]})"
            if s["device0_name"]
            else None
        ),
        "error": s["error"] or None,
    }


_available: ModuleType | None = None


def cuda_kernels() -> Any:
    """The CUDA extension, or RuntimeError saying why its kernels cannot run here. A success is
    remembered: the status query asks the driver for device properties, which costs more than
    a small kernel."""
    global _available
    if _available is None:
        s = cuda_status()
        if not s["available"]:
            raise RuntimeError(f"mmfast CUDA kernels are unavailable: {s['error']}")
        _available = cuda_module()
    return _available
