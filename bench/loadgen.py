"""Closed-loop HTTP load: C concurrent clients post a real JPEG for D seconds (bounded), on
127.0.0.1 only. Prints one JSON line: throughput, latency percentiles, errors, CPU use."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import httpx


def cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def run(url: str, image: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        measuring = False
        stop_at = time.monotonic() + warmup + seconds

        async def worker() -> None:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    r = await client.post(url, files={"image": ("photo.jpg", image, "image/jpeg")})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 599
                if measuring:
                    latencies.append(time.perf_counter() - start)
                    statuses[status] = statuses.get(status, 0) + 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        busy0, total0 = cpu_times()
        t0 = time.monotonic()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        busy1, total1 = cpu_times()
    latencies.sort()

    def pct(q: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)
            if latencies
            else None
        )

    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "throughput_rps": round(ok / elapsed, 1),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "cpu_percent": round(100 * (busy1 - busy0) / max(1e-9, total1 - total0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=1.5)
    args = parser.parse_args()
    assert args.url.startswith(("http://127.", "http://localhost")), "load only on loopback"
    os.nice(19)  # the load generator must not steal the server's CPU
    image = Path(args.image).read_bytes()
    print(
        json.dumps(asyncio.run(run(args.url, image, args.concurrency, args.seconds, args.warmup)))
    )


if __name__ == "__main__":
    main()
