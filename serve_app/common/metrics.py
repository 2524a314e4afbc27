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

        self.key_requests = Counter(
            "face_key_requests",
            description="Requests by API key name (never the key) and outcome: ok, "
            "client_error, server_error, unauthorized (no or an unknown key: key '-'), "
            "rate_limited.",
            tag_keys=("key", "outcome"),
        )

    def count(self, route: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})

    def count_key(self, name: str | None, status: int) -> None:
        outcome = {401: "unauthorized", 429: "rate_limited"}.get(status) or (
            "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        )
        self.key_requests.inc(tags={"key": name or "-", "outcome": outcome})


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
        self.version_mismatch = Gauge(
            "face_model_version_mismatch",
            description="1 while this replica serves another version than its deployment's pin "
            "(a refused artifact on this replica only, a follow_latest switch it missed).",
        )
        self.load_failures = Counter(
            "face_model_load_failures",
            description="Artifacts refused at load (bad checksum, bad metadata, unreadable).",
        )


class DetectorMetrics:
    def __init__(self) -> None:
        self.batch_size = Histogram(
            "face_detector_batch_size",
            description="Images per cascade run of the face detector.",
            boundaries=_BATCH_BOUNDARIES,
        )
        self.detect_seconds = Histogram(
            "face_detector_seconds",
            description="Time of one cascade run (all its images), on the inference thread.",
            boundaries=_LATENCY_BOUNDARIES_S,
        )
        self.version_mismatch = Gauge(
            "face_detector_version_mismatch",
            description="1 while this replica serves another detector version than its pin.",
        )
        self.load_failures = Counter(
            "face_detector_load_failures",
            description="Detector artifacts refused at load.",
        )


class VersionMetrics:
    """Per model version during a rollout (role: stable or candidate), from the ingress: the
    same figures /rollout shows, for Prometheus/Grafana. Agreement over a window is
    ``rate(face_version_decisions_total{agreed="yes"}) / rate(face_version_decisions_total)``."""

    def __init__(self) -> None:
        self.requests = Counter(
            "face_version_requests",
            description="Answers asked of a model version (copies included), by outcome.",
            tag_keys=("role", "version", "outcome"),
        )
        self.latency = Histogram(
            "face_version_latency_seconds",
            description="Time from the ingress sending an image to a version to its answer.",
            boundaries=_LATENCY_BOUNDARIES_S,
            tag_keys=("role", "version"),
        )
        self.decisions = Counter(
            "face_version_decisions",
            description="Label decisions of the candidate compared with the stable's, by "
            "whether they agreed.",
            tag_keys=("version", "agreed"),
        )
        self.abs_dp = Counter(
            "face_version_abs_dp",
            description="Sum of |p_candidate - p_stable| over compared label decisions.",
            tag_keys=("version",),
        )

    def observe(self, role: str, version: str, seconds: float, error: bool) -> None:
        self.requests.inc(
            tags={"role": role, "version": version, "outcome": "error" if error else "ok"}
        )
        if not error:
            self.latency.observe(seconds, tags={"role": role, "version": version})

    def compared(self, version: str, comparison) -> None:
        """comparison: serve_app.rollout.compare.Comparison."""
        if comparison.agreed:
            self.decisions.inc(comparison.agreed, tags={"version": version, "agreed": "yes"})
        if comparison.decisions > comparison.agreed:
            disagreed = comparison.decisions - comparison.agreed
            self.decisions.inc(disagreed, tags={"version": version, "agreed": "no"})
        if comparison.abs_dp_sum > 0:  # Ray's Counter refuses an increment of 0
            self.abs_dp.inc(comparison.abs_dp_sum, tags={"version": version})
