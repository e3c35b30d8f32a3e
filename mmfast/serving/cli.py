"""`mmfast serve`: flags -> ServeConfig -> models loaded (a bad bundle fails here, in one line,
before a port is bound) -> uvicorn (or Ray Serve with --ray)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .app import CONFIG_ENV, ServeConfig, config_to_env, create_app
from .limits import Limits
from .models import TASKS, load_models

__all__ = ["config_from_args", "serve"]


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """ValueError naming the flag for a bad value."""
    bundles: dict[str, str] = {}
    for spec in args.bundle:
        task, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--bundle {spec}: expected TASK=DIR (TASK: {', '.join(TASKS)})")
        if task not in TASKS:
            raise ValueError(f"--bundle {spec}: unknown task {task!r} (one of {', '.join(TASKS)})")
        if task in bundles:
            raise ValueError(f"--bundle: {task} given twice")
        bundles[task] = path
    for flag, value in (("--max-batch", args.max_batch), ("--queue", args.queue)):
        if value < 1:
            raise ValueError(f"{flag}: expected a positive integer, got {value}")
    if args.workers < 1:
        raise ValueError(f"--workers: expected a positive integer, got {args.workers}")
    if not args.max_wait_ms >= 0 or not args.timeout_s > 0:
        raise ValueError("--max-wait-ms must be >= 0 and --timeout-s > 0")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {args.port}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb: expected a positive number, got {args.max_body_mb}")
    allow_dir = None
    if args.allow_dir is not None:
        allow_dir = Path(args.allow_dir)
        if not allow_dir.is_dir():
            raise NotADirectoryError(f"--allow-dir {args.allow_dir}: not a directory")
    if args.workers > 1 and "retrieval" in bundles and not args.read_only_index:
        # each worker process holds its own copy of the index: additions would diverge
        raise ValueError(
            "--workers > 1 with a retrieval bundle needs --read-only-index (each worker has "
            "its own copy of the index)"
        )
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels
    )
    return ServeConfig(
        bundles=bundles,
        index=args.index,
        device=args.device,
        threads=args.threads,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue=args.queue,
        timeout_s=args.timeout_s,
        allow_mutation=not args.read_only_index,
        allow_dir=allow_dir,
        limits=limits,
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = config_from_args(args)
    if args.ray:
        from .ray_app import serve_ray

        return serve_ray(config, replicas=args.replicas, host=args.host, port=args.port)
    models = load_models(config.bundles, config.device, config.threads, config.index)
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        # SIGTERM: stop accepting, let in-flight requests finish (the batchers drain), exit
        "timeout_graceful_shutdown": config.timeout_s + 5,
    }
    if args.workers == 1:
        uvicorn.run(create_app(config, models), **common)
        return 0
    del models  # checked; each worker loads its own
    os.environ[CONFIG_ENV] = config_to_env(config)
    uvicorn.run(
        "mmfast.serving.app:app_from_env",
        factory=True,
        workers=args.workers,
        **common,
    )
    return 0
