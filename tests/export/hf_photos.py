"""Real photos for the Hugging Face captioner tests (skimage.data ships them)."""

from __future__ import annotations

import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data")


def real_photos() -> list[np.ndarray]:
    """Real photos of several sizes and aspect ratios, uint8 (H, W, 3): astronaut, coffee,
    chelsea, rocket, camera (grayscale as RGB, subsampled), a crop of astronaut."""
    gray = skdata.camera()[::3, ::2]
    return [
        skdata.astronaut(),
        skdata.coffee(),
        skdata.chelsea(),
        skdata.rocket(),
        np.stack([gray] * 3, -1),
        skdata.astronaut()[37:170, 11:300],
    ]
