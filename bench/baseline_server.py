"""What a user would write without us: one Starlette/uvicorn process, per-request inference on
the same artifact (decode, resize, normalise, forward one image).

``--mode lockfree`` (the default, what people write): decode and forward run in Starlette's
thread pool (``run_in_threadpool``, which is what a FastAPI ``def`` endpoint does), so several
batch-1 forwards overlap with each other and with HTTP parsing, each with ``--threads`` torch
threads. ``--mode locked`` holds an asyncio.Lock around inference: one forward at a time, the
baseline of the first benchmark round, kept for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import io

import numpy as np
import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.model.inference import forward, load_model


def build(model_uri: str, threads: int, mode: str = "lockfree") -> Starlette:
    torch.set_num_threads(threads)
    model = load_model(model_uri, torch.device("cpu"))
    meta = model.metadata
    h, w = meta.input_size

    def infer(data: bytes) -> dict:
        image = (
            Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        )
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
        probs = forward(model, x)[0].tolist()
        return {
            "labels": [
                {"label_id": i, "label": meta.labels[i], "probability": p}
                for i, p in sorted(enumerate(probs), key=lambda kv: -kv[1])
                if p >= meta.threshold
            ],
            "probabilities": dict(zip(meta.labels, probs)),
            "model": {"name": meta.name, "version": meta.version},
        }

    lock = asyncio.Lock()

    async def classify(request: Request) -> JSONResponse:
        form = await request.form()
        data = await form["image"].read()
        if mode == "locked":
            async with lock:
                return JSONResponse(await asyncio.to_thread(infer, data))
        return JSONResponse(await run_in_threadpool(infer, data))

    return Starlette(routes=[Route("/classify", classify, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["lockfree", "locked"], default="lockfree")
    args = parser.parse_args()
    uvicorn.run(
        build(args.model_uri, args.threads, args.mode),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
