"""Shared fixtures: a tiny generated shapes dataset (32 px) for the PyTorch-side tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from mmfast_export.shapes import ShapesConfig, write_dataset

    out = tmp_path_factory.mktemp("shapes")
    write_dataset(ShapesConfig(num_images=80, size=32, seed=3), out, workers=1)
    return out
