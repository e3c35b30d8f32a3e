"""`mmfast serve` on tiny exported bundles: a request answered inside a concurrent batch gets
exactly what it gets alone (caption, answer, search), bad requests get a 4xx JSON error with a
message, overload is a 503 with Retry-After, a slow request a 504, /metrics counts batches;
and one end-to-end run of a real `mmfast serve` process on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from test_onnx_retrieval_vqa import images, make_run  # noqa: E402

from mmfast.captioner import Captioner  # noqa: E402
from mmfast.retriever import Retriever  # noqa: E402
from mmfast.serving import Limits, ServeConfig, create_app  # noqa: E402
from mmfast.serving.models import load_models  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402

ANSWERS = ["blue", "circle", "green", "no", "red", "square", "yes", "1", "2"]


def caption_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained LSTM captioner whose output layer is scaled up (as in
    test_onnx_export), so that it says different things about different images."""
    from mmfast.preprocess import PreprocessConfig
    from mmfast.tokenizer import Tokenizer
    from mmfast_export.checkpoint import save_weights
    from mmfast_export.onnx_export import export_run
    from mmfast_export.runs import build_model

    run = tmp_path_factory.mktemp("caption")
    words = "a small large red blue green circle square triangle left right of above below"
    tok = Tokenizer.build([words])
    cfg = {
        "kind": "caption_lstm",
        "vocab_size": len(tok),
        "encoder": {"image_size": 32, "widths": [8, 16], "blocks": 1},
        "dropout": 0.0,
        "max_len": 12,
        "embed": 16,
        "hidden": 32,
        "att": 16,
    }
    torch.manual_seed(0)
    model = build_model("caption", cfg)
    with torch.no_grad():
        model.out.weight.mul_(8.0)
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    prep = PreprocessConfig(size=32).to_dict()
    meta = {"format": 1, "task": "caption", "model": cfg, "preprocess": prep, "vocab": "vocab.txt"}
    (run / "config.json").write_text(json.dumps(meta))
    bundle = tmp_path_factory.mktemp("caption_bundle")
    export_run(run, bundle)
    return bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ret_cfg = {
        "kind": "retrieval",
        "text_dim": 32,
        "text_layers": 1,
        "heads": 2,
        "embed_dim": 24,
        "max_len": 16,
        "rerank": True,
        "pool_heads": 2,
    }
    vqa_cfg = {
        "kind": "vqa",
        "num_answers": len(ANSWERS),
        "dim": 32,
        "text_layers": 1,
        "heads": 2,
        "glimpses": 2,
        "att": 16,
        "max_len": 16,
        "dropout": 0.0,
    }
    return {
        "caption": caption_bundle(tmp_path_factory),
        "retrieval": make_run(tmp_path_factory, "retrieval", ret_cfg)[3],
        "vqa": make_run(tmp_path_factory, "vqa", vqa_cfg, ANSWERS)[3],
    }


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


IMGS = images(8, seed=11)
IDS = [f"im{i}" for i in range(len(IMGS))]


def fresh_models(bundles: dict[str, Path]) -> dict[str, Any]:
    models = load_models(bundles, threads=1)
    r = models["retrieval"]
    assert isinstance(r, Retriever)
    r.add_images(IMGS, ids=IDS)
    return models


@pytest.fixture(scope="module")
def shared(bundles: dict[str, Path]) -> dict[str, Any]:
    """Models for the tests that do not change them (loading is most of a test's time)."""
    return fresh_models(bundles)


@asynccontextmanager
async def serving(
    models: dict[str, Any], **config: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app with its lifespan (batchers started, warm-up awaited) and a client on it."""
    app = create_app(ServeConfig(**config), models)
    state = app.state.mmfast
    async with app.router.lifespan_context(app):
        await state.ready.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c, state


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------------ the pipelines


@pytest.mark.parametrize("beam", [1, 3])
def test_caption_batch_is_each_alone(bundles: dict[str, Path], beam: int) -> None:
    """What the server's batching relies on: one batched caption() call gives each image
    the caption it gets alone. Greedy: tokens and score bit for bit. Beam search: the same
    tokens; the score may differ in float32's last bits (ONNX Runtime's matrix products over
    B x beam rows round differently from those over beam rows), well below any tie."""
    cap = Captioner.load(bundles["caption"], threads=1)
    together = cap.caption(IMGS, beam_size=beam, batch_size=len(IMGS))
    alone = [cap.caption([im], beam_size=beam)[0] for im in IMGS]
    assert [c.tokens for c in together] == [c.tokens for c in alone]
    if beam == 1:
        assert [c.score for c in together] == [c.score for c in alone]
        assert len({tuple(c.tokens) for c in alone}) > 1  # the images get different captions
    else:
        np.testing.assert_allclose(
            [c.score for c in together], [c.score for c in alone], rtol=1e-6, atol=0
        )


# ------------------------------------------------------------------------ batching


async def _alone_then_batched(
    c: httpx.AsyncClient, state: Any, task: str, send: Callable[[int], Any]
) -> tuple[list[Any], list[Any], int]:
    alone = []
    for i in range(len(IMGS)):
        r = await send(i)
        assert r.status_code == 200, r.text
        alone.append(r.json())
    before = _batches(state, task)
    rs = await asyncio.gather(*(send(i) for i in range(len(IMGS))))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    return alone, [r.json() for r in rs], _batches(state, task) - before


def same_result(got: Any, want: Any, where: str) -> None:
    """Equal, but floats to float32 rounding: a batched matrix product (B rows instead of 1)
    may round a score's last bits differently (VQA, search, beam search; greedy captions are
    bit for bit). Texts, ids, tokens and the order of answers must be identical."""
    if isinstance(want, float):
        assert isinstance(got, float), where
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=where)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            same_result(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same_result(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def _batches(state: Any, task: str) -> int:
    """Batches run so far for `task` (the batch-size histogram's count)."""
    for metric in state.metrics.batch_size.collect():
        for s in metric.samples:
            if s.name.endswith("_count") and s.labels["model"] == task:
                return int(s.value)
    return 0


def test_batched_requests_get_what_they_get_alone(shared: dict[str, Any]) -> None:
    """8 concurrent requests per task leave as ONE batch (max_batch 8, a long max wait: the
    batch leaves when it is full) and each gets what it got alone: the same caption, answers,
    ids, tokens, rankings; the same scores to float32 rounding (see same_result)."""

    async def main() -> None:
        async with serving(shared, max_batch=8, max_wait_ms=10_000) as (c, state):

            def caption(i: int) -> Any:
                return c.post("/v1/caption", files={"image": png(IMGS[i])})

            def answer(i: int) -> Any:
                body = {
                    "image": base64.b64encode(png(IMGS[i])).decode(),
                    "question": ["what colour is it ?", "is there a circle ?"][: 1 + i % 2],
                    "top_k": 3,
                }
                return c.post("/v1/answer", json=body)

            texts = ["a red circle", "a blue square left of a green circle", "what", "red"] * 2

            def search(i: int) -> Any:
                return c.post("/v1/search", json={"text": texts[i], "k": 3 + i % 3})

            def search_image(i: int) -> Any:
                return c.post("/v1/search", files={"image": png(IMGS[i])}, data={"k": 4})

            for task, send in (
                ("caption", caption),
                ("vqa", answer),
                ("retrieval", search),
                ("retrieval", search_image),
            ):
                alone, together, batches = await _alone_then_batched(c, state, task, send)
                same_result(together, alone, task)
                if send is caption:  # greedy decoding: bit for bit
                    assert together == alone, task
                assert batches == 1, (task, batches)

            # and what a request gets alone is what the pipeline gives
            cap = state.models["caption"]
            want = cap.caption([IMGS[0]])[0]
            got = (await caption(0)).json()
            assert (got["caption"], got["score"], got["tokens"]) == (
                want.text,
                want.score,
                want.tokens,
            )
            ids, scores = state.models["retrieval"].search(texts[1], k=4)
            got = (await search(1)).json()["results"]
            assert [(r["id"], r["score"]) for r in got] == list(
                zip(ids, scores.tolist(), strict=True)
            )
            a = state.models["vqa"].answer(IMGS[2], "what colour is it ?", top_k=3)
            got = (await answer(2)).json()["answers"][0]
            assert (got["answer"], got["confidence"]) == (a.text, a.confidence)

    run(main())


def test_different_options_are_not_mixed(shared: dict[str, Any]) -> None:
    """Requests with another beam size wait for their own batch (a caption() call takes one
    beam size), and still get their own answer."""

    async def main() -> None:
        async with serving(shared, max_batch=4, max_wait_ms=50) as (c, state):
            sends = [
                c.post("/v1/caption", files={"image": png(IMGS[i])}, data={"beam_size": 1 + i % 2})
                for i in range(4)
            ]
            rs = await asyncio.gather(*sends)
            cap = state.models["caption"]
            for i, r in enumerate(rs):
                want = cap.caption([IMGS[i]], beam_size=1 + i % 2)[0]
                assert r.json()["tokens"] == want.tokens

    run(main())


# ------------------------------------------------------------------------ overload


def test_overload_503_with_retry_after_then_504(shared: dict[str, Any]) -> None:
    models = shared
    cap = models["caption"]
    release = threading.Event()
    started = threading.Event()
    original = cap.caption

    def blocked(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)
        return original(*args, **kwargs)

    async def main() -> None:
        async with serving(models, max_batch=1, queue=2, timeout_s=5) as (c, state):
            cap.caption = blocked  # after warm-up

            def send() -> Any:
                return c.post("/v1/caption", files={"image": png(IMGS[0])})

            first = asyncio.create_task(send())  # runs, blocked
            await asyncio.to_thread(started.wait, 10)
            queued = [asyncio.create_task(send()) for _ in range(2)]  # fill the queue
            while state.batchers["caption"].depth < 2:
                await asyncio.sleep(0)  # let them reach the queue (no timing involved)
            shed = await send()
            assert shed.status_code == 503
            assert shed.json()["error"]["code"] == "overloaded"
            assert int(shed.headers["Retry-After"]) >= 1
            release.set()
            rs = await asyncio.gather(first, *queued)
            assert [r.status_code for r in rs] == [200, 200, 200]
            metrics = (await c.get("/metrics")).text
            assert 'mmfast_shed_total{model="caption",reason="queue_full"} 1.0' in metrics

        # a request still waiting when its timeout passes: 504, and its result is dropped
        release.clear()
        started.clear()
        async with serving(models, max_batch=1, timeout_s=0.2) as (c, state):
            cap.caption = blocked
            r = await c.post("/v1/caption", files={"image": png(IMGS[0])})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            release.set()

    try:
        run(main())
    finally:
        release.set()
        vars(cap).pop("caption", None)  # the class's method again


# ------------------------------------------------------------------------ bad requests


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes): refused
    from the header, or decoding it would take width * height * 3 bytes."""
    data = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


BAD: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (route, httpx kwargs, status, error code, words in the message)
    ("/v1/caption", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type", "multipart/form-data"),
    ("/v1/caption", {"content": b"{", "headers": {"content-type": "application/json"}}, 400,
     "bad_request", "not valid JSON"),
    ("/v1/caption", {"json": [1, 2]}, 400, "bad_request", "JSON object"),
    ("/v1/caption", {"json": {}}, 400, "bad_request", "image: missing"),
    ("/v1/caption", {"files": {"image": b"not an image"}}, 400, "invalid_image", "image"),
    ("/v1/caption", {"json": {"image": "@@@"}}, 400, "invalid_image", "base64"),
    ("/v1/caption", {"files": {"image": png(IMGS[0])[:60]}}, 400, "invalid_image", "decode"),
    ("/v1/caption", {"files": {"image": bomb_png(30000, 30000)}}, 413, "image_too_large",
     "limit"),
    ("/v1/caption", {"files": {"image": png(IMGS[0])}, "data": {"beam_size": "99"}}, 400,
     "bad_request", "beam_size"),
    ("/v1/caption", {"files": {"image": png(IMGS[0])}, "data": {"beam_size": "two"}}, 400,
     "bad_request", "beam_size"),
    ("/v1/caption", {"json": {"path": "a.png"}}, 403, "forbidden", "--allow-dir"),
    ("/v1/caption", {"content": b"0" * 5000, "headers": {"content-type": "application/json"}},
     413, "payload_too_large", "4096"),
    ("/v1/answer", {"files": {"image": png(IMGS[0])}}, 400, "bad_request", "question"),
    ("/v1/answer", {"files": {"image": png(IMGS[0])}, "data": {"question": " "}}, 400,
     "bad_request", "question"),
    ("/v1/answer", {"files": {"image": png(IMGS[0])}, "data": {"question": "q" * 1001}}, 400,
     "text_too_long", "1000"),
    ("/v1/answer", {"files": {"image": png(IMGS[0])}, "data": {"question": "q", "beam_size": 2}},
     400, "bad_request", "only a generative model"),  # refused by the pipeline, in the batcher
    ("/v1/search", {"json": {"text": "red", "k": 101}}, 400, "bad_request", "k"),
    ("/v1/search", {"json": {"text": "red", "k": 0}}, 400, "bad_request", "k"),
    ("/v1/search", {"json": {"text": ""}}, 400, "bad_request", "text"),
    ("/v1/search", {"json": {"text": "red", "rerank": "maybe"}}, 400, "bad_request", "rerank"),
    ("/v1/index/add", {"files": {"image": png(IMGS[0])}, "data": {"ids": "im0"}}, 400,
     "bad_request", "im0"),
    ("/v1/index/add", {"files": {"image": png(IMGS[0])}}, 400, "bad_request", "ids"),
    ("/v1/index/remove", {"json": {"ids": ["nope"]}}, 400, "bad_request", "nope"),
    ("/v1/nothing", {"json": {}}, 404, "not_found", "Not Found"),
]  # fmt: skip


def test_bad_requests_get_a_4xx_with_a_message(
    bundles: dict[str, Path], shared: dict[str, Any]
) -> None:
    async def main() -> None:
        async with serving(shared) as (c, _):
            for route, kwargs, status, code, words in BAD:
                if code == "payload_too_large":
                    continue  # below, with a small body limit
                r = await c.post(route, **kwargs)
                assert r.status_code == status, (route, kwargs.keys(), r.text)
                err = r.json()["error"]
                assert err["code"] == code and words in err["message"], (route, err)
            r = await c.get("/v1/caption")
            assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        async with serving(shared, limits=Limits(max_body_bytes=4096)) as (c, _):
            for route, kwargs, status, code, words in BAD:
                if code == "payload_too_large":
                    r = await c.post(route, **kwargs)
                    assert r.status_code == status and words in r.json()["error"]["message"]

            # a body without Content-Length (chunked) is counted as it arrives
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"0" * 1000

            r = await c.post(
                "/v1/caption", content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413, r.text
        # a model that is not loaded
        async with serving({"caption": shared["caption"]}) as (c, _):
            r = await c.post("/v1/answer", json={"question": "what", "image": ""})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_loaded"
            assert "--bundle vqa=DIR" in r.json()["error"]["message"]

    run(main())


def test_pixel_limit_and_server_paths(shared: dict[str, Any], tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png(IMGS[0]))
    (tmp_path / "secret.png").write_bytes(png(IMGS[1]))
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")

    async def main() -> None:
        limits = Limits(max_image_pixels=40 * 40)
        async with serving(shared, allow_dir=allowed, limits=limits) as (c, state):
            r = await c.post("/v1/caption", json={"path": "a.png"})
            assert r.status_code == 200, r.text
            assert r.json()["tokens"] == state.models["caption"].caption([IMGS[0]])[0].tokens
            for path, status in [
                ("../secret.png", 403),
                (str(tmp_path / "secret.png"), 403),
                ("link.png", 403),
                ("missing.png", 404),
            ]:
                r = await c.post("/v1/caption", json={"path": path})
                assert r.status_code == status, (path, r.text)
            big = png(np.zeros((50, 50, 3), np.uint8))
            r = await c.post("/v1/caption", files={"image": big})
            assert r.status_code == 413 and "1600 px" in r.json()["error"]["message"]

    run(main())


# ------------------------------------------------------------------------ index, health


def test_index_add_remove_and_read_only(bundles: dict[str, Path], shared: dict[str, Any]) -> None:
    ret = Retriever.load(bundles["retrieval"], threads=1)
    ret.add_images(IMGS, ids=IDS)

    async def main() -> None:
        async with serving({**shared, "retrieval": ret}) as (c, _):
            new = images(2, seed=99)
            files = [("image", png(a)) for a in new]
            r = await c.post("/v1/index/add", files=files, data={"ids": ["n0", "n1"]})
            assert r.status_code == 200 and r.json() == {"added": 2, "size": len(IMGS) + 2}
            r = await c.post("/v1/search", files={"image": png(new[1])}, data={"k": 1})
            assert r.json()["results"][0]["id"] == "n1"
            r = await c.post("/v1/index/remove", json={"ids": ["n1"]})
            assert r.json() == {"removed": 1, "size": len(IMGS) + 1}
            r = await c.post("/v1/search", files={"image": png(new[1])}, data={"k": 50})
            assert "n1" not in [x["id"] for x in r.json()["results"]]
            models = (await c.get("/v1/models")).json()["models"]
            assert set(models) == {"caption", "retrieval", "vqa"}
            assert models["retrieval"]["indexed"] == len(IMGS) + 1
        async with serving(shared, allow_mutation=False) as (c, _):
            r = await c.post("/v1/index/remove", json={"ids": ["im0"]})
            assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]

    run(main())


def test_health_readiness_metrics_docs(shared: dict[str, Any]) -> None:
    async def main() -> None:
        async with serving(shared) as (c, state):
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            assert (await c.get("/readyz")).status_code == 200
            await c.post("/v1/caption", files={"image": png(IMGS[0])})
            await c.post("/v1/caption", json={})
            text = (await c.get("/metrics")).text
            assert 'mmfast_requests_total{route="/v1/caption",status="200"} 1.0' in text
            assert 'mmfast_requests_total{route="/v1/caption",status="400"} 1.0' in text
            assert 'mmfast_batch_size_count{model="caption"}' in text
            assert 'mmfast_queue_depth{model="caption"} 0.0' in text
            assert "mmfast_request_seconds_bucket" in text
            paths = (await c.get("/openapi.json")).json()["paths"]
            assert {"/v1/caption", "/v1/answer", "/v1/search", "/v1/index/add"} <= set(paths)
            body = paths["/v1/caption"]["post"]["requestBody"]["content"]
            assert {"multipart/form-data", "application/json"} <= set(body)
        assert not state.ready.is_set()  # drained and stopped

    run(main())


# ------------------------------------------------------------------------ end to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_mmfast_serve_subprocess(bundles: dict[str, Path]) -> None:
    """A real `mmfast serve` on a loopback port: ready, captions and answers over HTTP as
    the pipelines give them, concurrent requests all answered, clean exit on SIGTERM."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "mmfast", "serve", "--port", str(port), "--threads", "1"]
    argv += ["--bundle", f"caption={bundles['caption']}", "--bundle", f"vqa={bundles['vqa']}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # waiting for another process: polling is the only way to know
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mmfast serve not ready within 60 s"
            time.sleep(0.2)
        cap = Captioner.load(bundles["caption"], threads=1)
        vqa = VQA.load(bundles["vqa"], threads=1)

        async def main() -> list[Any]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                return list(
                    await asyncio.gather(
                        *(c.post("/v1/caption", files={"image": png(im)}) for im in IMGS)
                    )
                )

        rs = asyncio.run(main())
        assert [r.json()["tokens"] for r in rs] == [c.tokens for c in cap.caption(IMGS)]
        r = httpx.post(
            base + "/v1/answer",
            files={"image": png(IMGS[3])},
            data={"question": "what colour is it ?"},
        )
        assert r.json()["answers"][0]["answer"] == vqa.answer(IMGS[3], "what colour is it ?").text
        r = httpx.post(base + "/v1/search", json={"text": "red"})
        assert r.status_code == 404 and json.loads(r.text)["error"]["code"] == "model_not_loaded"
        assert "mmfast_batch_size_bucket" in httpx.get(base + "/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    # uvicorn shuts down gracefully, then dies by the signal it got (-15), as it should
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out, out


def test_cli_refuses_bad_flags(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from mmfast.cli import main

    for argv, words in [
        (["serve", "--bundle", "nope"], "expected TASK=DIR"),
        (["serve", "--bundle", "speech=/x"], "unknown task"),
        (["serve", "--bundle", f"caption={bundles['vqa']}"], "not a 'caption' one"),
        (["serve", "--bundle", "caption=/nonexistent"], "/nonexistent"),
        (["serve", "--bundle", f"vqa={bundles['vqa']}", "--max-batch", "0"], "--max-batch"),
        (
            ["serve", "--bundle", f"retrieval={bundles['retrieval']}", "--workers", "2"],
            "--read-only-index",
        ),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mmfast serve: ") and words in err and len(err.splitlines()) == 1
