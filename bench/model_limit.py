"""The ceiling: the artifact called directly in one process, through the same load and
forward code the model deployment runs (uint8 in, normalisation, channels_last), on any device
and precision the deployment supports.

CUDA timing: kernels run asynchronously, so a loop timed on the host alone measures launches,
not work. ``time_batches`` synchronises before and after each timed region: latency from
calls synchronised one by one, throughput from calls queued back to back and one synchronise
at the end (what a busy replica does).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from serve_app.model.inference import forward, load_model

WARM_UP_CALLS = 3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    call: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    seconds: float,
    device: torch.device,
) -> dict:
    """Runs ``call(x)`` for about ``seconds``; x is (N, 3, H, W) on ``device``. Returns
    {batch, images_per_s, batch_latency_ms (median)}.

    On CPU one loop gives both figures (every call is synchronous; `make bench`'s history was
    measured so). On CUDA a third of the time measures latency (synchronised per call), the
    rest throughput (queued, synchronised once)."""
    batch = len(x)
    for _ in range(WARM_UP_CALLS):
        call(x)
    synchronize(device)
    latencies: list[float] = []
    latency_budget = seconds if device.type == "cpu" else seconds / 3
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < latency_budget or len(latencies) < 3:
        t = time.perf_counter()
        call(x)
        synchronize(device)
        latencies.append(time.perf_counter() - t)
        n += batch
    elapsed = time.perf_counter() - start
    if device.type != "cpu":
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds - latency_budget:
            call(x)
            n += batch
        synchronize(device)  # the queued work is part of the elapsed time
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "batch": batch,
        "images_per_s": round(n / elapsed, 1),
        "batch_latency_ms": round(latencies[len(latencies) // 2] * 1000, 3),
    }


def random_batch(batch: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(batch, 3, H, W) uint8 on ``device``: what the model replica hands to forward()."""
    return torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8).to(device)


def measure(
    model_uri: str,
    threads: int,
    batch_sizes: list[int],
    seconds: float = 3.0,
    device: str = "cpu",
    precision: str = "float32",
) -> dict:
    """The served artifact (serve_app.inference.load_model + forward) at each batch size.
    Returns {threads, device, precision, rows: [time_batches(...)], best: the fastest row}."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = load_model(model_uri, dev, precision)
    size = tuple(model.metadata.input_size)
    rows = [
        time_batches(lambda x: forward(model, x), random_batch(b, size, dev), seconds, dev)
        for b in batch_sizes
    ]
    best = max(rows, key=lambda r: r["images_per_s"])
    return {
        "threads": threads,
        "device": device,
        "precision": precision,
        "rows": rows,
        "best": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "float16", "bfloat16"]
    )
    args = parser.parse_args()
    results = [
        measure(args.model_uri, t, args.batch_sizes, args.seconds, args.device, args.precision)
        for t in args.threads
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
