"""`mmfast serve`: the pipelines over HTTP (FastAPI + uvicorn), with dynamic batching,
back-pressure, limits and Prometheus metrics. Needs the `serve` extra; ``import mmfast`` never
imports this package.

    from mmfast.serving import ServeConfig, create_app
    app = create_app(ServeConfig(bundles={"caption": "bundles/caption"}))
"""

from __future__ import annotations

from .app import ServeConfig, create_app
from .limits import Limits

__all__ = ["Limits", "ServeConfig", "create_app"]
