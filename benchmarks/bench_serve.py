"""`mmfast serve` under load: dynamic batching on vs off, and overload.

Reproduces the "Serving" table of benchmarks/README.md:

    python benchmarks/bench_serve.py                  # ~4 minutes on 2 cores
    python benchmarks/bench_serve.py --duration 5 --concurrency 1,32

What it does:
1. Builds a captioner of the demo's size (LSTM, 64 px, conv widths 32-64-128, untrained; its
   <eos> logit is pushed down so that every caption is exactly --tokens tokens long: the
   decoding cost of a trained model's full-length caption, independent of luck), unless
   --bundle gives one. Times the pipeline itself: one image alone vs a batch of 32.
2. For batching on (--max-batch 32) and off (--max-batch 1), starts a real `mmfast serve` on
   a loopback port and drives it with locust (a separate process, FastHttpUser, no think
   time) at each concurrency for --duration seconds: throughput, p50/p99 latency, and every
   answer checked against the pipeline's caption of the image sent.
3. Overload: 10x the highest concurrency against a server with a short queue (--queue 32):
   offered vs accepted rate, the share shed (503), p99 of the accepted requests, and the
   count of accepted requests answered correctly (must be all of them).

Needs the serve extra and locust (pip install 'mmfast[serve]' locust) and torch for step 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
N_IMAGES = 16


# ------------------------------------------------------------------------ load generator
# (runs in its own process: locust monkey-patches the standard library with gevent)


def _load(url: str, duration: float, users: int, images_file: str, out: str) -> None:
    import gevent
    from locust import FastHttpUser, constant, task
    from locust.env import Environment

    spec = json.loads(Path(images_file).read_text())
    pngs = [bytes.fromhex(h) for h in spec["png_hex"]]
    expected = spec["captions"]
    tokens = spec["tokens"]
    # multipart bodies, made once (FastHttpUser sends bytes as they are)
    boundary = "mmfastbenchboundary"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    bodies = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="max_new_tokens"\r\n\r\n'
            f'{tokens}\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
        for png in pngs
    ]
    counts = {"ok": 0, "wrong": 0, "shed": 0, "timeout": 0, "other": 0}
    latencies: list[float] = []
    measuring = [False]

    class Client(FastHttpUser):
        host = url
        wait_time = constant(0)
        i = 0

        @task
        def caption(self) -> None:
            k = (id(self) + Client.i) % len(pngs)
            Client.i += 1
            t0 = time.perf_counter()
            with self.client.post(
                "/v1/caption", data=bodies[k], headers=headers, catch_response=True
            ) as r:
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    good = r.json()["caption"] == expected[k]
                    r.success()
                else:
                    good = False
                    r.success()  # counted below
                if not measuring[0]:
                    return
                if r.status_code == 200:
                    counts["ok" if good else "wrong"] += 1
                    latencies.append(dt)
                elif r.status_code == 503:
                    counts["shed"] += 1
                elif r.status_code == 504:
                    counts["timeout"] += 1
                else:
                    counts["other"] += 1

    env = Environment(user_classes=[Client])
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(min(2.0, duration / 4))  # ramp-up and warm connections: not measured
    measuring[0] = True
    t0 = time.perf_counter()
    gevent.sleep(duration)
    measuring[0] = False
    elapsed = time.perf_counter() - t0
    runner.quit()
    Path(out).write_text(json.dumps({"counts": counts, "latencies": latencies, "s": elapsed}))


# ------------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`mmfast serve` in a subprocess on a loopback port, ready when entered."""

    def __init__(self, bundle: Path, threads: int, max_batch: int, queue: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [
            sys.executable, "-m", "mmfast", "serve", "--bundle", f"caption={bundle}",
            "--port", str(self.port), "--threads", str(threads), "--max-batch", str(max_batch),
            "--max-wait-ms", "2", "--queue", str(queue), "--timeout-s", "10",
            "--log-level", "warning",
        ]  # fmt: skip

    def __enter__(self) -> Server:
        import httpx

        # numpy's BLAS threads (image resizing) spin against ONNX Runtime's and the event
        # loop on a small machine: one thread each (see benchmarks/README.md, Serving)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmfast serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mmfast serve not ready in 120 s")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)

    def batch_sizes(self) -> float:
        """Mean requests per batch so far (from /metrics)."""
        import httpx

        total = count = 0.0
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith('mmfast_batch_size_sum{model="caption"}'):
                total = float(line.split()[-1])
            elif line.startswith('mmfast_batch_size_count{model="caption"}'):
                count = float(line.split()[-1])
        return total / count if count else 0.0


def _drive(url: str, duration: float, users: int, images_file: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [sys.executable, __file__, "--_load", url, str(duration), str(users)]
        subprocess.run([*argv, str(images_file), out.name], check=True)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    return result


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    lat = np.array(r["latencies"]) * 1000
    c = r["counts"]
    total = sum(c.values())
    return {
        "rps": c["ok"] / r["s"],
        "offered_rps": total / r["s"],
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "accepted": c["ok"] + c["wrong"],
        "correct": c["ok"],
        "shed": c["shed"],
        "timeouts": c["timeout"],
        "other": c["other"],
        "total": total,
    }


# ------------------------------------------------------------------------ the model


def build_bundle(out: Path) -> Path:
    """The demo's captioner size, untrained, <eos> suppressed (see the module doc)."""
    import torch

    from mmfast.preprocess import PreprocessConfig
    from mmfast.tokenizer import Tokenizer
    from mmfast_export.checkpoint import save_weights
    from mmfast_export.onnx_export import export_run
    from mmfast_export.runs import build_model

    words = "a small large red blue green yellow circle square triangle left right of above below"
    tok = Tokenizer.build([words + " and the in on next to"])
    cfg = {
        "kind": "caption_lstm",
        "vocab_size": len(tok),
        "encoder": {"image_size": 64, "widths": [32, 64, 128], "blocks": 1},
        "dropout": 0.0,
        "max_len": 32,
    }
    torch.manual_seed(0)
    model = build_model("caption", cfg)
    with torch.no_grad():
        model.out.bias[tok.special_tokens.eos] = -1e4
    run = out / "run"
    run.mkdir(parents=True)
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    prep = PreprocessConfig(size=64).to_dict()
    meta = {"format": 1, "task": "caption", "model": cfg, "preprocess": prep, "vocab": "vocab.txt"}
    (run / "config.json").write_text(json.dumps(meta))
    export_run(run, out / "bundle")
    return out / "bundle"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", default=None, help="a caption bundle (default: build one)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", default="1,8,32", help="concurrent clients, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="the server's ONNX Runtime threads")
    p.add_argument("--tokens", type=int, default=16, help="tokens per caption")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    import numpy as np

    from mmfast.captioner import Captioner

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else build_bundle(Path(tmp))
        cap = Captioner.load(bundle, threads=args.threads)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(N_IMAGES)]
        from PIL import Image

        pngs = []
        for a in images:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        captions = [c.text for c in cap.caption(images, max_new_tokens=args.tokens)]
        images_file = Path(tmp) / "images.json"
        images_file.write_text(
            json.dumps(
                {"png_hex": [b.hex() for b in pngs], "captions": captions, "tokens": args.tokens}
            )
        )
        # the pipeline alone: what batching can win at most
        batch = [images[i % N_IMAGES] for i in range(32)]

        def t(fn: Any, n: int) -> float:
            fn()
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return float(np.median(ts)) * 1000

        one = t(lambda: cap.caption([images[0]], max_new_tokens=args.tokens), 30)
        b32 = t(lambda: cap.caption(batch, max_new_tokens=args.tokens, batch_size=32), 5)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs; server threads {args.threads}"
        )
        print(f"pipeline: 1 image {one:.1f} ms; 32 images {b32:.1f} ms ({b32 / 32:.2f} ms/image)")

        rows: list[dict[str, Any]] = []
        for batching, max_batch in (("on", 32), ("off", 1)):
            with Server(bundle, args.threads, max_batch, queue=1024) as server:
                for users in levels:
                    s = _summary(_drive(server.url, args.duration, users, images_file))
                    s.update(batching=batching, users=users, mean_batch=server.batch_sizes())
                    rows.append(s)
                    print(
                        f"batching {batching:3} c={users:3}: {s['rps']:7.1f} req/s  "
                        f"p50 {s['p50']:7.1f} ms  p99 {s['p99']:7.1f} ms  "
                        f"correct {s['correct']}/{s['accepted']}  (errors {s['other']})"
                    )
        overload_users = 10 * max(levels)
        with Server(bundle, args.threads, 32, queue=32) as server:
            s = _summary(_drive(server.url, args.duration, overload_users, images_file))
            s.update(batching="on", users=overload_users, overload=True)
            rows.append(s)
        print(
            f"overload c={overload_users}: offered {s['offered_rps']:.0f} req/s, accepted "
            f"{s['rps']:.1f} req/s, shed {s['shed'] / max(s['total'], 1):.0%} (503), "
            f"timeouts {s['timeouts']}, p99 of accepted {s['p99']:.0f} ms, "
            f"correct {s['correct']}/{s['accepted']}"
        )
        by = {(r["batching"], r["users"]): r for r in rows if not r.get("overload")}
        top = max(levels)
        if ("on", top) in by and ("off", top) in by:
            gain = by[("on", top)]["rps"] / by[("off", top)]["rps"]
            p99_ratio = by[("on", top)]["p99"] / by[("off", 1)]["p50"]
            print(
                f"c={top}: batching on / off throughput {gain:.2f}x (target 2.5x, floor 1.5x); "
                f"p99 {p99_ratio:.1f}x the batch-1 latency (target < 4x)"
            )
        if args.json:
            info = {"pipeline_ms": {"one": one, "batch32": b32}, "rows": rows}
            Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_load":
        url, duration, users, images_file, out = sys.argv[2:7]
        _load(url, float(duration), int(users), images_file, out)
        sys.exit(0)
    sys.exit(main())
