"""Shared fixtures: kernel variants, optional torch, hypothesis profile."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from mmfast import _C
from mmfast.ops import _conv2d

settings.register_profile(
    "ci",
    deadline=None,  # 2 shared cores: timing-based failures would be noise
    max_examples=60,
    # the `variant` fixture is meant to hold across all examples of a test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(autouse=True, scope="session")
def _private_ort_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The pipelines' optimised-model cache in a directory of the test run (not ~/.cache)."""
    before = os.environ.get("MMFAST_CACHE_DIR")
    os.environ["MMFAST_CACHE_DIR"] = str(tmp_path_factory.mktemp("ort-cache"))
    yield
    if before is None:
        os.environ.pop("MMFAST_CACHE_DIR", None)
    else:
        os.environ["MMFAST_CACHE_DIR"] = before


@pytest.fixture(params=_C.runnable_variants())
def variant(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per kernel variant this CPU can run (avx512, avx2, portable)."""
    previous = _C.active_variant()
    _C.set_variant(request.param)
    try:
        yield request.param
    finally:
        _C.set_variant(previous)


@pytest.fixture(params=["spatial", "channel", "winograd"])
def conv_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on each of conv2d's CPU paths: the direct kernel's two GEMMs (channel falls
    back to spatial off AVX-512), then Winograd (where it applies; elsewhere the direct kernel
    as "auto" picks it), as algorithm="auto" would run them."""
    path = request.param
    _C._set_conv_path("auto" if path == "winograd" else path)
    _conv2d._auto_override = "winograd" if path == "winograd" else "direct"
    try:
        yield path
    finally:
        _C._set_conv_path("auto")
        _conv2d._auto_override = None
