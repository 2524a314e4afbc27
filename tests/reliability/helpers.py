"""Replica inspection for the reliability scenarios (the load client: tests/load.py)."""

from __future__ import annotations

import os


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


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = ["os", "percentile", "replica_ids", "replica_pids", "replicas", "rss_mb"]
