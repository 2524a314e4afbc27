"""The project's own metrics, exported through Ray's metrics agent next to Serve's built-ins
(names are prefixed ``ray_`` on the Prometheus endpoint)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_BOUNDARIES_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class IngressMetrics:
    def __init__(self) -> None:
        self.decode_seconds = Histogram(
            "face_decode_seconds",
            description="Time to decode and resize one uploaded image.",
            boundaries=_LATENCY_BOUNDARIES_S,
        )
        self.requests = Counter(
            "face_requests",
            description="HTTP requests answered by the ingress, by route and status code.",
            tag_keys=("route", "status"),
        )

    def count(self, route: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})


class ModelMetrics:
    def __init__(self) -> None:
        self.batch_size = Histogram(
            "face_batch_size",
            description="Images per model forward pass.",
            boundaries=_BATCH_BOUNDARIES,
        )
        self.inference_seconds = Histogram(
            "face_inference_seconds",
            description="Time of one batched forward pass, including normalisation.",
            boundaries=_LATENCY_BOUNDARIES_S,
        )
        self.model_info = Gauge(
            "face_model_info",
            description="1 for the model version this replica serves.",
            tag_keys=("model", "version"),
        )
        self.load_failures = Counter(
            "face_model_load_failures",
            description="Artifacts refused at load (bad checksum, bad metadata, unreadable).",
        )
