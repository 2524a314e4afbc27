"""The ceiling: the artifact called directly in one process, through the same load and
forward code the model deployment runs (uint8 in, normalisation, channels_last)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from serve_app.inference import forward, load_model


def measure(model_uri: str, threads: int, batch_sizes: list[int], seconds: float = 3.0) -> dict:
    torch.set_num_threads(threads)
    model = load_model(model_uri, torch.device("cpu"))
    h, w = model.metadata.input_size
    rows = []
    for batch in batch_sizes:
        x = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8)
        for _ in range(2):
            forward(model, x)
        n, start = 0, time.perf_counter()
        latencies = []
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            forward(model, x)
            latencies.append(time.perf_counter() - t)
            n += batch
        elapsed = time.perf_counter() - start
        latencies.sort()
        rows.append(
            {
                "batch": batch,
                "images_per_s": round(n / elapsed, 1),
                "batch_latency_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            }
        )
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"threads": threads, "rows": rows, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    results = [measure(args.model_uri, t, args.batch_sizes, args.seconds) for t in args.threads]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
