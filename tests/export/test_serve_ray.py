"""`mmfast serve` on Ray Serve: a local Ray on loopback, the caption and VQA models as
deployments (Ray's batching), the same HTTP API and answers as the pipelines. Skipped without
ray (the `ray` extra)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]
pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from test_serve import IMGS, bundles, png  # noqa: E402, F401 (bundles: a fixture)

from mmfast.captioner import Captioner  # noqa: E402
from mmfast.serving import ServeConfig  # noqa: E402
from mmfast.serving.ray_app import build_app  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_ray_serve_on_loopback(bundles: dict[str, Path]) -> None:  # noqa: F811
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(
            bundles={"caption": bundles["caption"], "vqa": bundles["vqa"]},
            threads=1,
            max_batch=8,
            max_wait_ms=50,
        )
        serve.run(build_app(config, replicas=1), name="mmfast", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        cap = Captioner.load(bundles["caption"], threads=1)
        vqa = VQA.load(bundles["vqa"], threads=1)

        async def main() -> list[Any]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as c:
                return list(
                    await asyncio.gather(
                        *(c.post("/v1/caption", files={"image": png(im)}) for im in IMGS)
                    )
                )

        rs = asyncio.run(main())
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        assert [r.json()["tokens"] for r in rs] == [c.tokens for c in cap.caption(IMGS)]
        r = httpx.post(
            base + "/v1/answer",
            files={"image": png(IMGS[1])},
            data={"question": "what colour is it ?"},
            timeout=60,
        )
        assert r.json()["answers"][0]["answer"] == vqa.answer(IMGS[1], "what colour is it ?").text
        # errors keep their shape through Ray: at the edge, and from inside a replica
        r = httpx.post(base + "/v1/caption", json={}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = httpx.post(  # refused by the pipeline, inside the replica
            base + "/v1/answer",
            files={"image": png(IMGS[1])},
            data={"question": "what colour is it ?", "beam_size": "2"},
            timeout=60,
        )
        assert r.status_code == 400 and "only a generative model" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/search", json={"text": "red"}, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_loaded"
        assert httpx.get(base + "/readyz", timeout=60).status_code == 200
    finally:
        serve.shutdown()
        ray.shutdown()
