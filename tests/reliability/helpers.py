"""Load generation and replica inspection for the reliability scenarios."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests import images as images_module


def replicas(served) -> dict[str, list[dict]]:
    """{deployment: [replica details]} from the dashboard's REST API."""
    app = served.client.get_serve_details()["applications"]["face-attributes"]
    return {name: d["replicas"] for name, d in app["deployments"].items()}


def replica_ids(served) -> dict[str, set[str]]:
    return {name: {r["replica_id"] for r in rs} for name, rs in replicas(served).items()}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def replica_pids(served) -> dict[str, list[int]]:
    return {name: [r["pid"] for r in rs if r.get("pid")] for name, rs in replicas(served).items()}


@dataclass
class LoadResult:
    statuses: Counter = field(default_factory=Counter)
    latencies_503: list[float] = field(default_factory=list)
    latencies_200: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    bad_503: int = 0  # 503s without Retry-After


class LoadGenerator:
    """Closed-loop clients posting a real JPEG until stopped (bounded by `max_seconds`)."""

    def __init__(
        self,
        url: str,
        clients: int,
        image: bytes | None = None,
        max_seconds: float = 120,
        images: list[bytes] | None = None,
    ):
        """images: sent in turn by each client (default: ``image``, or a red JPEG)."""
        self.url = url
        self.clients = clients
        self.images = images or [image or images_module.solid()]
        self.deadline = time.monotonic() + max_seconds
        self.stop_event = threading.Event()
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            sent = 0
            while not self.stop_event.is_set() and time.monotonic() < self.deadline:
                image = self.images[sent % len(self.images)]
                sent += 1
                start = time.perf_counter()
                try:
                    r = client.post("/classify", files={"image": ("a.jpg", image, "image/jpeg")})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 599  # connection-level failure
                    r = None
                elapsed = time.perf_counter() - start
                with self._lock:
                    res = self.result
                    res.statuses[status] += 1
                    res.timeline.append((time.monotonic(), status))
                    if status == 200:
                        res.latencies_200.append(elapsed)
                        res.versions.append(r.json()["model"]["version"])
                    elif status == 503:
                        res.latencies_503.append(elapsed)
                        if "retry-after" not in r.headers:
                            res.bad_503 += 1
                if status == 503:
                    time.sleep(0.05)  # a polite client backs off a little

    def __enter__(self) -> LoadGenerator:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join()

    def count(self) -> int:
        with self._lock:
            return sum(self.result.statuses.values())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = ["LoadGenerator", "os", "percentile", "replica_ids", "replica_pids", "replicas", "rss_mb"]
