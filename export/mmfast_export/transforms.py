"""Image preprocessing in torch: the same steps as ``mmfast.preprocess`` (numpy/Pillow).

Training runs this on batches; the runtime runs the numpy version. ``tests/export`` proves they
give the same tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfast.preprocess import PreprocessConfig

__all__ = ["normalize", "preprocess_tensor", "resize"]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float pixels in [0, 255] -> (B, 3, size, size), antialiased bilinear
    (Pillow's BILINEAR algorithm, computed in float)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(B, 3, S, S) pixels in [0, 255] -> (x / 255 - mean) / std."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def preprocess_tensor(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 or float (B, 3, H, W) or (3, H, W) RGB pixels -> (B, 3, S, S) float32 model input."""
    if cfg.resample != "bilinear_antialias":
        # a Hugging Face processor's steps (PIL resize on 8-bit data, crop) exist in numpy only
        raise ValueError(
            f"resample {cfg.resample!r}: the torch preprocessing does mmfast's own float "
            "bilinear resize only; use mmfast.preprocess for a Hugging Face processor's"
        )
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB pixels, got {tuple(x.shape)}")
    x = x.to(torch.float32)
    return normalize(resize(x, cfg.size), cfg)
