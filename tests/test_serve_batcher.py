"""The serving layer without models (torch-free): the dynamic batcher's contract (batches of
one key, each caller its own slice, a bounded queue, timeouts, a failing request isolated,
draining on stop), the image limits at the edge, and `import mmfast` without FastAPI."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image, ImageFile

pytest.importorskip("fastapi")

from mmfast.serving.batcher import Batcher, QueueFull, RequestTimeout, ShuttingDown
from mmfast.serving.errors import ApiError
from mmfast.serving.limits import Limits, decode_image


class Model:
    """run_batch for the tests: x -> 10 x, records each batch; can be held on an event."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.running = threading.Event()

    def __call__(self, xs: Sequence[int]) -> list[int]:
        self.running.set()
        self.hold.wait(10)
        self.batches.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [10 * x for x in xs]


def test_gathers_up_to_max_batch_and_slices() -> None:
    async def main() -> None:
        m = Model()
        b = Batcher("m", m, max_batch=4, max_wait_ms=20)
        b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(6)))
        await b.stop()
        assert results == [10 * i for i in range(6)]
        assert m.batches == [[0, 1, 2, 3], [4, 5]]

    asyncio.run(main())


def test_only_one_key_per_batch() -> None:
    async def main() -> None:
        m = Model()
        b = Batcher("m", m, max_batch=8, max_wait_ms=20)
        b.start()
        keys = ["a", "b", "a", "b", "a"]
        results = await asyncio.gather(*(b.submit(i, key=k) for i, k in enumerate(keys)))
        await b.stop()
        assert results == [0, 10, 20, 30, 40]
        assert m.batches == [[0, 2, 4], [1, 3]]

    asyncio.run(main())


def test_a_failing_request_does_not_fail_the_others() -> None:
    async def main() -> None:
        m = Model()
        b = Batcher("m", m, max_batch=3, max_wait_ms=1000)
        b.start()
        results = await asyncio.gather(*(b.submit(x) for x in (1, -1, 2)), return_exceptions=True)
        await b.stop()
        assert results[0] == 10 and results[2] == 20
        assert isinstance(results[1], ValueError)
        assert m.batches == [[1, -1, 2], [1], [-1], [2]]  # the batch, then one at a time

    asyncio.run(main())


def test_full_queue_sheds_with_retry_after_and_timeouts_are_dropped() -> None:
    async def main() -> None:
        m = Model()
        m.hold.clear()
        b = Batcher("m", m, max_batch=1, max_wait_ms=0, max_queue=2)
        b.start()
        running = asyncio.create_task(b.submit(1))
        await asyncio.to_thread(m.running.wait, 10)  # the worker holds 1
        queued = [asyncio.create_task(b.submit(x)) for x in (2, 3)]
        while b.depth < 2:
            await asyncio.sleep(0)
        with pytest.raises(QueueFull) as e:
            await b.submit(4)
        assert e.value.retry_after_s >= 1
        # a request that times out while queued leaves the queue and never runs
        queued[1].cancel()  # a caller that goes away: its request leaves the queue too
        with pytest.raises(asyncio.CancelledError):
            await queued[1]
        assert b.depth == 1
        with pytest.raises(RequestTimeout):
            await b.submit(5, timeout=0.01)
        m.hold.set()
        assert await running == 10 and await queued[0] == 20
        await b.stop()
        assert m.batches == [[1], [2]]

    asyncio.run(main())


def test_stop_drains_everything_queued_and_refuses_new() -> None:
    async def main() -> None:
        m = Model()
        m.hold.clear()
        b = Batcher("m", m, max_batch=2, max_wait_ms=0)
        b.start()
        tasks = [asyncio.create_task(b.submit(x)) for x in range(5)]
        await asyncio.to_thread(m.running.wait, 10)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await b.submit(9)
        m.hold.set()
        assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]  # none lost
        await stopping
        assert sorted(x for batch in m.batches for x in batch) == [0, 1, 2, 3, 4]  # once each

    asyncio.run(main())


def test_a_wrong_number_of_results_is_an_error_not_a_wrong_slice() -> None:
    async def main() -> None:
        b: Batcher[int, int] = Batcher("m", lambda xs: [0], max_batch=2, max_wait_ms=1000)
        b.start()
        results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        await b.stop()
        # the batch of 2 fails; alone, each gets its (single) result
        assert results == [0, 0]

    asyncio.run(main())


# ------------------------------------------------------------------------------ limits


def _png(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header says width x height: a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IHDR")
    data[i + 4 : i + 12] = struct.pack(">II", width, height)
    data[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 17])))
    return bytes(data)


def test_decompression_bomb_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("decoded pixel data")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for side, limits in ((20000, Limits()), (100, Limits(max_image_pixels=50 * 50))):
        with pytest.raises(ApiError) as e:
            decode_image(_png(side, side), limits)
        assert e.value.status == 413 and e.value.code == "image_too_large", e.value.message
    # over twice Pillow's own limit: Pillow refuses at open, still a 413
    with pytest.raises(ApiError) as e:
        decode_image(_png(40000, 40000), Limits(max_image_pixels=2_000_000_000))
    assert e.value.status == 413


def test_decode_image_gives_rgb_uint8() -> None:
    buf = io.BytesIO()
    Image.new("LA", (5, 3), (200, 255)).save(buf, format="PNG")
    a = decode_image(buf.getvalue(), Limits())
    assert a.shape == (3, 5, 3) and a.dtype == np.uint8 and (a == 200).all()
    for data in (b"", b"GIF89a....", buf.getvalue()[:40]):
        with pytest.raises(ApiError) as e:
            decode_image(data, Limits())
        assert e.value.status == 400 and e.value.code == "invalid_image"


def test_mmfast_imports_without_fastapi() -> None:
    """The runtime and its CLI never import the serving extra; `mmfast serve` without it is
    one line saying what to install."""
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import mmfast, mmfast.cli\n"
        "assert 'uvicorn' not in sys.modules and 'prometheus_client' not in sys.modules\n"
        "sys.exit(mmfast.cli.main(['serve', '--bundle', 'caption=x']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "mmfast serve: needs the `serve` extra (fastapi is not installed): "
        "pip install 'mmfast[serve]'"
    ]
