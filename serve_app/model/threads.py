"""``torch_threads: auto``: how many intra-op threads a CPU model replica's forward gets.

A light model's forward is short next to the rest of a request's CPU (HTTP, decode, the hop
between replicas: ~8 ms per request on this 2-core box), and a 2-thread forward has to wait
for both cores, which the ingress and Ray are using meanwhile. mobilenet_v3_small at 224,
config.yaml otherwise as shipped, one run each on the same box: 1 thread served 80.8 / 168.8 /
202.3 req/s at c = 1 / 8 / 32 (p50 11.9 ms at c=1) where 2 threads served 39.5 / 132.3 / 179.4
(p50 24.7 ms) (bench/results/ab13-threads1.md, cost-r0.md). A heavy model's forward dominates
a request and parallelises: resnet34 went from 8.9 to 15.9 req/s with 2 threads
(docs/performance.md). So ``auto`` times a batch-1 forward on one thread when a model loads:
under AUTO_HEAVY_FORWARD_MS it keeps one thread, else it takes ``heavy_threads``.
"""

from __future__ import annotations

import statistics
import time

import torch

from serve_app.model.inference import LoadedModel, forward

# mobilenet_v3_small at 224: ~8 ms on one thread here; resnet34: ~100 ms; the demo model
# (resnet18 at 64 px): ~4 ms.
AUTO_HEAVY_FORWARD_MS = 25.0


def batch1_forward_ms(model: LoadedModel, repeats: int = 3) -> float:
    """Median wall time of a batch-1 forward with the calling thread's current thread count."""
    h, w = model.spec.input_size
    x = torch.zeros(1, 3, h, w, dtype=torch.uint8, device=model.device)
    forward(model, x)  # the first call after a thread-count change builds the OpenMP team
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(model, x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def choose_threads(model: LoadedModel, heavy_threads: int) -> tuple[int, float]:
    """On the inference thread: set and return its thread count (1 for a light model,
    heavy_threads for a heavy one) and the 1-thread batch-1 forward time that decided it."""
    torch.set_num_threads(1)
    ms = batch1_forward_ms(model)
    threads = 1 if ms < AUTO_HEAVY_FORWARD_MS else heavy_threads
    torch.set_num_threads(threads)
    return threads, ms
