"""Closed-loop HTTP load: C concurrent clients post a real JPEG for D seconds (bounded), on
127.0.0.1 only. Prints one JSON line: throughput, latency percentiles, errors, CPU use (the
box's, and with --server-pid the server's own, every process it started, per role:
bench/cpu_account.py).

A minimal HTTP/1.1 keep-alive client on asyncio streams, the request encoded once: httpx took
a whole core at 64 clients here and starved the server it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from bench import cpu_account


def cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def multipart_request(url: str, image: bytes, api_key: str | None = None) -> bytes:
    """The whole POST, bytes on the wire: one multipart 'image' field (and the API key of a
    service with keys)."""
    parts = urlsplit(url)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"'
            f"\r\nContent-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        + (f"Authorization: Bearer {api_key}\r\n" if api_key else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def post(conn: list, host: str, port: int, request: bytes, timeout: float) -> int:
    """Send one request on the kept-alive connection conn[0] (opened on demand); the status."""
    if not conn:
        conn.extend(await asyncio.open_connection(host, port))
    reader, writer = conn
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if h)}
    await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
    if headers.get("connection", "").lower() == "close":
        writer.close()
        conn.clear()
    return status


async def run(
    url: str,
    image: bytes,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pid: int | None,
    api_key: str | None = None,
) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    parts = urlsplit(url)
    request = multipart_request(url, image, api_key)
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async def worker() -> None:
        conn: list = []
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                status = await post(conn, parts.hostname, parts.port, request, timeout=60)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                status = 599
                if conn:
                    conn[1].close()
                    conn.clear()
            if measuring:
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
        if conn:
            conn[1].close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    busy0, total0 = cpu_times()
    server0 = cpu_account.snapshot(server_pid) if server_pid else {}
    t0 = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    server1 = cpu_account.snapshot(server_pid) if server_pid else {}
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
        "statuses": {str(k): v for k, v in sorted(statuses.items())},  # 599: connection error
        "cpu_percent": round(100 * (busy1 - busy0) / max(1e-9, total1 - total0), 1),
        **(server_cpu(server0, server1, ok, elapsed) if server_pid else {}),
    }


def server_cpu(before: dict, after: dict, ok: int, elapsed: float) -> dict:
    """The server's CPU over the measured window: per 1,000 answered requests and in cores."""
    by_role = cpu_account.cpu_by_role(before, after)
    total = sum(by_role.values())
    return {
        "server_cpu_s_per_1000": round(1000 * total / max(1, ok), 2),
        "server_cores_busy": round(total / elapsed, 2),
        "server_cpu_s_by_role": by_role,
        "server_processes": len(after),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--server-pid", type=int, help="account the CPU of this process tree")
    parser.add_argument(
        "--api-key", default=os.environ.get("FACE_API_KEY"), help="for a service with API keys"
    )
    args = parser.parse_args()
    assert args.url.startswith(("http://127.", "http://localhost")), "load only on loopback"
    os.nice(19)  # the load generator must not steal the server's CPU
    image = Path(args.image).read_bytes()
    print(
        json.dumps(
            asyncio.run(
                run(
                    args.url,
                    image,
                    args.concurrency,
                    args.seconds,
                    args.warmup,
                    args.server_pid,
                    args.api_key,
                )
            )
        )
    )


if __name__ == "__main__":
    main()
