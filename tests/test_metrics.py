"""The project's metrics reach Ray's Prometheus endpoint next to Serve's built-ins."""

from __future__ import annotations

import re

import httpx
import pytest
import ray

from tests import images
from tests.harness import wait_for

pytestmark = pytest.mark.serve

EXPECTED = (
    "ray_face_decode_seconds_bucket",
    "ray_face_batch_size_bucket",
    "ray_face_inference_seconds_bucket",
    "ray_face_requests_total",
    "ray_face_model_info",
    "ray_serve_num_http_requests_total",  # one of Serve's built-ins, for comparison
)


def metrics_url() -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def test_metrics_are_exported(served):
    for _ in range(5):
        served.http.post("/classify", files={"image": ("a.jpg", images.solid(), "image/jpeg")})
    served.http.post("/classify", content=b"", headers={"content-type": "image/png"})  # a 400

    def scrape() -> str | None:
        text = httpx.get(metrics_url(), timeout=10).text
        return text if all(name in text for name in EXPECTED) else None

    text = wait_for(scrape, 90, "the project's metrics on Ray's metrics endpoint", interval=2)
    assert re.search(r'ray_face_requests_total\{[^}]*route="/classify"[^}]*status="200"', text)
    assert re.search(r'ray_face_requests_total\{[^}]*status="400"', text)
    assert re.search(r'ray_face_model_info\{[^}]*version="v1"[^}]*\} 1', text)
