"""Cost of POST /explain's occlusion maps on this machine's CPU (docs/performance.md,
"Explanations"), and what an explanation does to a /classify that arrives meanwhile.

    python -m bench.explain [--threads 2] [--demo models/face-attributes/latest] [--out FILE]

Per artifact: ms per image for one forward (what /classify pays), for an explanation at
grid 8 and grid 4 (which maps all 40 attributes at once, so "per attribute" is that / 40 when
every attribute is wanted, and the whole figure when one is), and the latency of a 1-image
prediction sent to a model replica while it explains one image (in chunks of 4, 16 (the
default) or 1024 occluded copies: the last is one job, i.e. no interleaving) against an idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.artifacts import bench_artifact
from serve_app.model.deployment import FaceAttributeModel
from serve_app.model.explain import explain_on_thread
from serve_app.model.inference import forward, load_model


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compute_costs(uri: str, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    model = load_model(uri, torch.device("cpu"))
    h, w = model.spec.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, h, w), dtype=np.uint8)
    batch = torch.from_numpy(pixels)
    costs = {"forward_ms": 1000 * timed(lambda: forward(model, batch), 10)}
    for grid in (8, 4):
        seconds = timed(lambda g=grid: explain_on_thread(model, pixels, g, 16), 3)
        costs[f"explain_grid{grid}_ms"] = 1000 * seconds
        costs[f"explain_grid{grid}_ms_per_attribute_all40"] = 1000 * seconds / 40
    return costs


async def prediction_latency(
    uri: str, threads: int, during_explain: bool, chunk: int = 16
) -> float:
    """Worst ms of 1-image predictions sent one after another, idle or while one image is
    explained (grid 8) in chunks of ``chunk`` occluded copies."""
    replica = FaceAttributeModel.func_or_class(device="cpu", torch_threads=threads)
    config = {"model_uri": uri, "batch_wait_timeout_s": 0, "explain_chunk_size": chunk}
    await replica.reconfigure(config)
    spec = replica.preprocess_spec()
    pixels = np.zeros((1, 3, *spec.input_size), np.uint8)
    await replica.predict(pixels, spec)
    explaining = asyncio.create_task(replica.explain(pixels, spec, 8)) if during_explain else None
    await asyncio.sleep(0.01)
    times = []
    # One after another while the explanation runs (5 when idle); the worst is what a
    # /classify arriving at a bad moment waits.
    while (explaining and not explaining.done()) or (not explaining and len(times) < 5):
        start = time.perf_counter()
        await replica.predict(pixels, spec)
        times.append(time.perf_counter() - start)
    if explaining:
        await explaining
    return 1000 * max(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.explain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo", default="models/face-attributes/latest")
    parser.add_argument("--out", type=Path, default=Path("bench/results/explain.json"))
    args = parser.parse_args()
    uris = {
        "resnet34-224": bench_artifact("resnet34"),
        "mobilenet_v3_small-224": bench_artifact("mobilenet_v3_small"),
    }
    if Path(args.demo).exists():
        uris["demo (resnet18-64)"] = args.demo
    results = {}
    for name, uri in uris.items():
        costs = compute_costs(uri, args.threads)
        costs["predict_worst_ms_idle"] = asyncio.run(prediction_latency(uri, args.threads, False))
        for chunk in (4, 16, 1024):  # 1024: the whole explanation as one job, no interleaving
            costs[f"predict_worst_ms_during_explain_chunk{chunk}"] = asyncio.run(
                prediction_latency(uri, args.threads, True, chunk)
            )
        results[name] = {k: round(v, 1) for k, v in costs.items()}
        print(name, json.dumps(results[name]))
    args.out.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
