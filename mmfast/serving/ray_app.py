"""Scale-out on Ray Serve: the same HTTP API, each model a deployment with its own replicas
and Ray's batching (``@serve.batch``).

    from mmfast.serving import ServeConfig
    from mmfast.serving.ray_app import build_app
    from ray import serve

    serve.run(build_app(ServeConfig(bundles={"caption": "/shared/bundles/caption"}), replicas=4))

or ``mmfast serve --ray --bundle caption=DIR --replicas 4`` (a local Ray, or the cluster that
RAY_ADDRESS names). The ingress deployment runs the FastAPI app of :mod:`mmfast.serving.app`
(request parsing and limits at the edge, errors, metrics) with no models of its own; it hands
each parsed request to the model's deployment, whose replicas each load the bundle and gather
concurrent requests into one batched call (requests with different options, e.g. beam sizes,
run as separate calls inside the batch: :func:`run_grouped`). Bundle paths must be readable on
every node (a shared file system, or the same path everywhere). The index is read-only here:
each replica holds its own copy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from .app import ServeConfig, config_to_env, create_app
from .limits import Limits
from .models import answer_batch, caption_batch, load_models, search_batch, warm_up

__all__ = ["ModelDeployment", "build_app", "run_grouped", "serve_ray"]

_BATCH_FNS: dict[str, Callable[[Any, Sequence[Any]], list[dict[str, Any]]]] = {
    "caption": caption_batch,
    "vqa": answer_batch,
    "retrieval": search_batch,
}


def run_grouped(
    fn: Callable[[Any, Sequence[Any]], list[dict[str, Any]]], model: Any, reqs: Sequence[Any]
) -> list[Any]:
    """Ray's batch mixes options; one pipeline call per key, results back in order. A
    failing group's requests each get that exception (Ray then raises it to their callers)."""
    out: list[Any] = [None] * len(reqs)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(reqs):
        groups.setdefault(r.key, []).append(i)
    for rows in groups.values():
        try:
            results: list[Any] = fn(model, [reqs[i] for i in rows])
        except Exception as e:
            results = [e] * len(rows)
        for i, res in zip(rows, results, strict=True):
            out[i] = res
    return out


class _ModelDeployment:
    """One model's replica: loads and warms its bundle, batches with ``@serve.batch``."""

    def __init__(self, task: str, config_json: str) -> None:
        config = _config_from_json(config_json)
        self.task = task
        self.model = load_models(
            {task: config.bundles[task]}, config.device, config.threads, config.index
        )[task]
        warm_up(self.model)
        self.fn = _BATCH_FNS[task]
        self.batch.set_max_batch_size(config.max_batch)
        self.batch.set_batch_wait_timeout_s(config.max_wait_ms / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # type: ignore[untyped-decorator]
    async def batch(self, reqs: list[Any]) -> list[Any]:
        # the pipeline call in a thread: the replica's event loop keeps gathering requests
        results = await asyncio.to_thread(run_grouped, self.fn, self.model, reqs)
        return results

    async def __call__(self, req: Any) -> dict[str, Any]:
        result = await self.batch(req)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, dict)
        return result


class _Ingress:
    """The HTTP front: mmfast's FastAPI app, with the model deployments as its backends."""

    def __init__(self, config_json: str, **handles: DeploymentHandle) -> None:
        self.config = _config_from_json(config_json)
        self.handles = handles

    def __serve_build_asgi_app__(self) -> Any:
        def remote(handle: DeploymentHandle) -> Callable[[Any], Any]:
            async def call(req: Any) -> dict[str, Any]:
                result: dict[str, Any] = await handle.remote(req)
                return result

            return call

        return create_app(self.config, remote={task: remote(h) for task, h in self.handles.items()})


# Ray's decorators return Ray's own classes; typed as Any (the `ray` extra is optional)
ModelDeployment: Any = serve.deployment(_ModelDeployment)
Ingress: Any = serve.deployment(serve.ingress()(_Ingress))


def _config_from_json(text: str) -> ServeConfig:
    d = json.loads(text)
    d["limits"] = Limits(**d["limits"])
    return ServeConfig(**d)


def build_app(config: ServeConfig, replicas: int = 1) -> Any:
    """The Ray Serve application: an ingress plus one deployment per model, `replicas`
    replicas each (CPU threads per replica: config.threads)."""
    text = config_to_env(config)
    handles = {
        task: ModelDeployment.options(
            name=f"mmfast-{task}",
            num_replicas=replicas,
            # what Ray schedules by: the replica's ONNX Runtime threads
            ray_actor_options={"num_cpus": config.threads or 1},
            max_ongoing_requests=max(2 * config.max_batch, 8),
            max_queued_requests=config.queue,
        ).bind(task, text)
        for task in config.bundles
    }
    # the ingress parses and forwards (light work): it takes no CPU from the models' share
    ingress = Ingress.options(name="mmfast-ingress", ray_actor_options={"num_cpus": 0})
    return ingress.bind(text, **handles)


def serve_ray(config: ServeConfig, replicas: int, host: str, port: int) -> int:
    """`mmfast serve --ray`: run the application until interrupted."""
    import signal
    import threading

    import ray

    ray.init(address=None, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config, replicas), name="mmfast", route_prefix="/")
    print(f"mmfast serve on Ray Serve: http://{host}:{port} (Ctrl-C to stop)")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    ray.shutdown()
    return 0
