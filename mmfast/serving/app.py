"""The HTTP app: routes, request parsing at the edge, errors, health, metrics.

    app = create_app(ServeConfig(bundles={"caption": "bundles/caption"}))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (OpenAPI at /docs and /openapi.json):

    POST /v1/caption       image -> caption              (multipart `image`, or JSON)
    POST /v1/answer        image + question(s) -> answers
    POST /v1/search        text (or image) query -> the k best indexed images
    POST /v1/index/add     images + ids -> indexed        (off with allow_mutation=False)
    POST /v1/index/remove  ids -> removed
    GET  /v1/models        what is loaded
    GET  /healthz          the process answers
    GET  /readyz           models loaded and warmed (503 before, and while draining)
    GET  /metrics          Prometheus

An image comes as a multipart file field, as base64 in a JSON field (``"image": "..."``), or,
only with ``allow_dir``, as a path under that directory (``"path": "..."``). Every refusal is
``{"error": {"code": ..., "message": ...}}`` with a 4xx (5xx: overload, timeout, a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._checks import one_line
from .._pipeline import Pipeline
from .._version import __version__
from ..captioner import Captioner
from ..retriever import Retriever
from ..vqa import VQA
from .batcher import Batcher, QueueFull, RequestTimeout, ShuttingDown
from .errors import ApiError, error_body
from .limits import Limits, check_k, check_text, decode_base64, decode_image, read_server_image
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .models import (
    AnswerRequest,
    CaptionRequest,
    SearchRequest,
    answer_batch,
    caption_batch,
    load_models,
    search_batch,
    warm_up,
)

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("mmfast.serve")

# A model served elsewhere (a Ray Serve deployment): a request -> its result.
Remote = Callable[[Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ServeConfig:
    """What `mmfast serve` was asked for (its flags, one field each)."""

    bundles: Mapping[str, str | Path] = field(default_factory=dict)  # task -> bundle dir
    index: str | Path | None = None  # a saved retrieval index to serve
    device: str = "cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads per session
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 256  # waiting requests per model before 503
    timeout_s: float = 30.0  # per request, queueing included (504 past it)
    allow_mutation: bool = True  # /v1/index/add and /remove
    allow_dir: str | Path | None = None  # images by server path only under this directory
    limits: Limits = field(default_factory=Limits)


class _State:
    """The app's models, batchers and metrics (``app.state.mmfast``)."""

    def __init__(
        self,
        config: ServeConfig,
        models: Mapping[str, Pipeline],
        remote: Mapping[str, Remote] | None = None,
    ) -> None:
        self.config = config
        self.models = dict(models)
        self.remote = dict(remote or {})
        self.metrics = Metrics()
        self.ready = asyncio.Event()  # set when warmed; cleared when draining
        self.allow_dir = Path(config.allow_dir) if config.allow_dir is not None else None
        self.batchers: dict[str, Batcher[Any, dict[str, Any]]] = {}
        runs: dict[str, Callable[[Any], Any]] = {
            "caption": lambda reqs: caption_batch(self._model("caption", Captioner), reqs),
            "vqa": lambda reqs: answer_batch(self._model("vqa", VQA), reqs),
            "retrieval": lambda reqs: search_batch(self._model("retrieval", Retriever), reqs),
        }
        for task in self.models:
            self.batchers[task] = Batcher(
                task,
                runs[task],
                max_batch=config.max_batch,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.queue,
                observer=self.metrics,
            )

    def _model(self, task: str, cls: type[Any]) -> Any:
        m = self.models[task]
        assert isinstance(m, cls)
        return m

    def require(self, task: str) -> None:
        """404 unless `task` is served (here or remotely)."""
        if task not in self.batchers and task not in self.remote:
            raise ApiError(
                404, "model_not_loaded", f"no {task} model is loaded (--bundle {task}=DIR)"
            )

    def admit(self, task: str) -> None:
        """404 unless served; 503 at once if its queue is full, before the body is read and
        its image decoded: under overload, shedding must cost next to nothing."""
        self.require(task)
        b = self.batchers.get(task)
        if b is not None and b.depth >= b.max_queue:
            self.metrics.shed(task, "queue_full")
            raise ApiError(
                503,
                "overloaded",
                f"{task}: the queue is full; retry in {b.retry_after()} s",
                {"Retry-After": str(b.retry_after())},
            )

    def batcher(self, task: str) -> Batcher[Any, dict[str, Any]]:
        self.require(task)
        return self.batchers[task]

    async def submit(self, task: str, req: Any) -> dict[str, Any]:
        """A request through its model's batcher (or its remote deployment); batcher and
        pipeline errors -> ApiError."""
        self.require(task)
        timeout = self.config.timeout_s
        try:
            if task in self.remote:
                try:
                    return await asyncio.wait_for(self.remote[task](req), timeout)
                except TimeoutError:
                    raise RequestTimeout(f"{task}: no result within {timeout:g} s") from None
            return await self.batchers[task].submit(req, key=req.key, timeout=timeout)
        except QueueFull as e:
            raise ApiError(
                503, "overloaded", str(e), {"Retry-After": str(e.retry_after_s)}
            ) from None
        except ShuttingDown as e:
            raise ApiError(503, "shutting_down", str(e), {"Retry-After": "1"}) from None
        except RequestTimeout as e:
            raise ApiError(504, "timeout", str(e)) from None
        except (ValueError, TypeError) as e:  # the pipeline refused an argument
            raise ApiError(400, "bad_request", one_line(e)) from None
        except MemoryError as e:
            raise ApiError(507, "out_of_memory", one_line(e)) from None
        except Exception as e:
            if type(e).__name__ == "BackPressureError":  # Ray Serve's max_queued_requests
                raise ApiError(503, "overloaded", one_line(e), {"Retry-After": "1"}) from None
            raise

    async def warm(self) -> None:
        for task, model in self.models.items():
            await self.batchers[task].run_exclusive(functools.partial(warm_up, model))
        self.ready.set()


# ------------------------------------------------------------------------------ parsing


class _Body:
    """A request's fields and uploaded files, from JSON or multipart/form-data alike."""

    def __init__(self, fields: dict[str, Any], files: dict[str, list[bytes]]) -> None:
        self.fields = fields
        self.files = files

    @classmethod
    async def read(cls, request: Request, limits: Limits) -> _Body:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            raw = await request.body()
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, "bad_request", f"body: not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise ApiError(400, "bad_request", "body: expected a JSON object")
            return cls(data, {})
        if ctype == "multipart/form-data":
            fields: dict[str, Any] = {}
            files: dict[str, list[bytes]] = {}
            try:
                form = await request.form(max_files=limits.max_images, max_fields=100)
            except StarletteHTTPException as e:  # malformed multipart, too many parts
                raise ApiError(400, "bad_request", f"body: {e.detail}") from None
            try:
                for name, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        files.setdefault(name, []).append(await value.read())
                    elif name in fields:  # a repeated field (ids, question) -> a list
                        prev = fields[name]
                        fields[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
                    else:
                        fields[name] = value
            finally:
                await form.close()
            return cls(fields, files)
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype or '(none)'}: send application/json or multipart/form-data",
        )

    def int_field(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self.fields.get(name)
        if v is None or v == "":
            return default
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise ApiError(400, "bad_request", f"{name}: expected an integer") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ApiError(400, "bad_request", f"{name}: expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ApiError(400, "bad_request", f"{name}: expected {lo}..{hi}, got {v}")
        return v

    def bool_field(self, name: str, default: bool) -> bool:
        v = self.fields.get(name)
        if v is None or v == "":
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "1", "yes", "false", "0", "no"):
            return v.lower() in ("true", "1", "yes")
        raise ApiError(400, "bad_request", f"{name}: expected true or false, got {v!r}")

    def str_list(self, name: str, at_most: int, *, required: bool = True) -> list[str]:
        v = self.fields.get(name)
        if v is None:
            if required:
                raise ApiError(400, "bad_request", f"{name}: missing")
            return []
        items = v if isinstance(v, list) else [v]
        if not items or not all(isinstance(x, str) for x in items):
            raise ApiError(400, "bad_request", f"{name}: expected a string or a list of them")
        if len(items) > at_most:
            raise ApiError(400, "bad_request", f"{name}: at most {at_most}, got {len(items)}")
        return items

    async def images(self, state: _State, name: str, at_most: int) -> list[Any]:
        """The request's images under field `name`: uploads, base64 strings or server paths
        (field ``path``/``paths``), decoded (in a thread) and checked against the limits."""
        limits = state.config.limits
        raw: list[tuple[str, bytes]] = []
        for i, data in enumerate(self.files.get(name, [])):
            raw.append((f"{name}[{i}]" if i else name, data))
        value = self.fields.get(name)
        if value is not None:
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                raw.append((f"{name}[{i}]" if i else name, decode_base64(v, name)))
        paths = self.fields.get("path")
        path_list = (paths if isinstance(paths, list) else [paths]) if paths is not None else []
        if not raw and not path_list:
            raise ApiError(
                400, "bad_request", f"{name}: missing (a file upload, base64 JSON, or path)"
            )
        if len(raw) + len(path_list) > at_most:
            raise ApiError(
                400, "bad_request", f"{name}: at most {at_most}, got {len(raw) + len(path_list)}"
            )
        out: list[Any] = []
        for field_name, data in raw:
            out.append(await asyncio.to_thread(decode_image, data, limits, field_name))
        for p in path_list:
            out.append(await asyncio.to_thread(read_server_image, p, state.allow_dir, limits))
        return out


# ------------------------------------------------------------------------------ ASGI edge


class _BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"request body over {limit} bytes")


class _Edge:
    """Pure ASGI middleware: the body-size limit (Content-Length first, then the bytes as
    they arrive, so a chunked upload cannot get past it) and per-route metrics."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.config.limits.max_body_bytes
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                e = _BodyTooLarge(limit)
                await _json_error(e.status, e.code, e.message)(scope, receive, send_status)
            else:
                await self.app(scope, receive_limited, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.state.metrics.request_done(name, status, time.perf_counter() - t0)


def _json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


# ------------------------------------------------------------------------------ the app


def create_app(
    config: ServeConfig,
    models: Mapping[str, Pipeline] | None = None,
    remote: Mapping[str, Remote] | None = None,
) -> FastAPI:
    """The app for `config`; `models` (TASK -> loaded pipeline) if the caller has loaded
    them already (the CLI does, to fail before binding a port), else loaded here from
    config.bundles. Warm-up runs in the background at startup; /readyz waits for it.

    remote: TASK -> a model served elsewhere (mmfast.serving.ray_app: Ray Serve deployments,
    which batch for themselves); then nothing is loaded here and the index is read-only."""
    if models is None:
        models = (
            {}
            if remote is not None
            else load_models(config.bundles, config.device, config.threads, config.index)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for b in state.batchers.values():
            b.start()
        warming = asyncio.create_task(state.warm())
        try:
            yield
        finally:
            state.ready.clear()  # load balancers stop sending; queued requests still finish
            if not warming.done():
                warming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warming
            await asyncio.gather(*(b.stop() for b in state.batchers.values()))

    app = FastAPI(
        title="mmfast",
        version=__version__,
        description="Captioning, text-to-image search and visual question answering over "
        "exported mmfast bundles, with dynamic batching.",
        lifespan=lifespan,
    )
    # built before startup, so that the routes and the tests can reach it
    state = _State(config, models, remote)
    app.state.mmfast = state
    app.add_middleware(_Edge, state=state)
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _json_error(exc.status, exc.code, exc.message, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return _json_error(422, "invalid_request", "; ".join(parts) or "invalid request")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return _json_error(exc.status_code, code, str(exc.detail), exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path, exc_info=exc)
        return _json_error(500, "internal", f"internal error ({type(exc).__name__})")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "base64 image file"},
                        "path": {"type": "string", "description": "server path (--allow-dir)"},
                    },
                }
            },
        },
    }
}


def _body_doc(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI request body: the image fields plus `fields`, as multipart or JSON."""
    doc: dict[str, Any] = copy.deepcopy(_IMAGE_BODY)
    for content in doc["requestBody"]["content"].values():
        content["schema"]["properties"].update(fields)
    return doc


def _add_routes(app: FastAPI, state: _State) -> None:
    limits = state.config.limits
    Handler = Callable[[Request], Awaitable[Any]]

    def post(path: str, doc: dict[str, Any], summary: str) -> Callable[[Handler], Handler]:
        return app.post(path, openapi_extra=doc, summary=summary)

    @post(
        "/v1/caption",
        _body_doc(
            {
                "beam_size": {"type": "integer", "minimum": 1, "maximum": limits.max_beam_size},
                "max_new_tokens": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": limits.max_new_tokens,
                },
            }
        ),
        "Caption one image",
    )
    async def caption(request: Request) -> dict[str, Any]:
        state.admit("caption")
        body = await _Body.read(request, limits)
        beam = body.int_field("beam_size", None, 1, limits.max_beam_size)
        new = body.int_field("max_new_tokens", None, 1, limits.max_new_tokens)
        (image,) = await body.images(state, "image", 1)
        return await state.submit("caption", CaptionRequest(image, beam, new))

    @post(
        "/v1/answer",
        _body_doc(
            {
                "question": {
                    "description": "a question, or a list of them about the same image",
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                },
                "top_k": {"type": "integer", "minimum": 1, "maximum": limits.max_k},
                "beam_size": {"type": "integer", "minimum": 1, "maximum": limits.max_beam_size},
            }
        ),
        "Answer questions about one image",
    )
    async def answer(request: Request) -> dict[str, Any]:
        state.admit("vqa")
        body = await _Body.read(request, limits)
        questions = body.str_list("question", limits.max_questions)
        for i, q in enumerate(questions):
            check_text(q, f"question[{i}]" if len(questions) > 1 else "question", limits)
        top_k = body.int_field("top_k", None, 1, limits.max_k)
        beam = body.int_field("beam_size", 1, 1, limits.max_beam_size)
        assert beam is not None
        (image,) = await body.images(state, "image", 1)
        return await state.submit("vqa", AnswerRequest(image, tuple(questions), top_k, beam))

    @post(
        "/v1/search",
        _body_doc(
            {
                "text": {"type": "string", "description": "a text query (or give an image)"},
                "k": {"type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 10},
                "rerank": {"type": "boolean", "default": False},
            }
        ),
        "Search the index by text or by image",
    )
    async def search(request: Request) -> dict[str, Any]:
        state.admit("retrieval")
        body = await _Body.read(request, limits)
        k = body.int_field("k", 10, 1, limits.max_k)
        assert k is not None
        check_k(k, limits)
        rerank = body.bool_field("rerank", False)
        if "text" in body.fields:
            text = check_text(body.fields["text"], "text", limits)
            req = SearchRequest(text, None, k, rerank)
        else:
            if rerank:
                raise ApiError(400, "bad_request", "rerank: only for a text query")
            (image,) = await body.images(state, "image", 1)
            req = SearchRequest(None, image, k)
        return await state.submit("retrieval", req)

    def mutable() -> Retriever:
        state.require("retrieval")
        if not state.config.allow_mutation or "retrieval" in state.remote:
            raise ApiError(
                403, "forbidden", "the index is read-only (--read-only-index, or Ray Serve)"
            )
        model = state.models["retrieval"]
        assert isinstance(model, Retriever)
        return model

    @post(
        "/v1/index/add",
        _body_doc(
            {
                "ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "one id per image, in order (repeat the field in multipart)",
                }
            }
        ),
        "Add images to the index",
    )
    async def index_add(request: Request) -> dict[str, Any]:
        model = mutable()
        body = await _Body.read(request, limits)
        images = await body.images(state, "image", limits.max_images)
        ids = body.str_list("ids", limits.max_images)
        if len(ids) != len(images):
            raise ApiError(400, "bad_request", f"ids: {len(ids)} ids for {len(images)} images")

        def add() -> int:
            model.add_images(images, ids=ids)
            return len(model.index)

        try:
            size = await state.batcher("retrieval").run_exclusive(add)
        except (ValueError, TypeError) as e:  # a repeated or existing id
            raise ApiError(400, "bad_request", one_line(e)) from None
        return {"added": len(ids), "size": size}

    @app.post("/v1/index/remove", summary="Remove images from the index by id")
    async def index_remove(request: Request) -> dict[str, Any]:
        model = mutable()
        body = await _Body.read(request, limits)
        ids = body.str_list("ids", 10_000)

        def remove() -> int:
            model.remove(ids)
            return len(model.index)

        try:
            size = await state.batcher("retrieval").run_exclusive(remove)
        except (ValueError, TypeError) as e:  # an unknown id: none removed
            raise ApiError(400, "bad_request", one_line(e)) from None
        return {"removed": len(ids), "size": size}

    @app.get("/v1/models", summary="The loaded models")
    async def list_models() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for task, m in state.models.items():
            info: dict[str, Any] = {"bundle": str(m.bundle.path), "kind": m.bundle.manifest.kind}
            if isinstance(m, Retriever):
                info["indexed"] = len(m.index)
            out[task] = info
        for task in state.remote:
            out[task] = {"bundle": str(state.config.bundles.get(task, "")), "remote": True}
        return {"models": out}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models loaded and warmed, not draining")
    async def readyz() -> Response:
        if state.ready.is_set():
            return JSONResponse({"status": "ready"})
        return _json_error(503, "not_ready", "warming up or shutting down")

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------------------ workers

CONFIG_ENV = "MMFAST_SERVE_CONFIG"


def config_to_env(config: ServeConfig) -> str:
    """The config as JSON, for worker processes (uvicorn --workers starts each from an
    import string, so the config travels in the environment: see :func:`app_from_env`)."""
    d = dict(vars(config))
    d["bundles"] = {k: str(v) for k, v in config.bundles.items()}
    d["limits"] = dict(vars(config.limits))
    for k in ("index", "allow_dir"):
        d[k] = None if d[k] is None else str(d[k])
    return json.dumps(d)


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process: the config from MMFAST_SERVE_CONFIG."""
    import os

    d = json.loads(os.environ[CONFIG_ENV])
    d["limits"] = Limits(**d["limits"])
    return create_app(ServeConfig(**d))
