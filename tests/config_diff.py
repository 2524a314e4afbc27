"""Compare Serve configs key by key, so variants can differ only where documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Every key where a GPU variant (config.gpu.yaml, kuberay/rayservice.yaml) may differ from
# config.yaml. Paths name the application, then the deployment by name.
GPU_OVERRIDES = frozenset(
    {
        "args.device",
        "args.precision",
        "args.decode_on",
        "args.images_per_model_call",
        "FaceAttributeModel.ray_actor_options.num_gpus",
        "CandidateModel.ray_actor_options.num_gpus",
        "FaceDetector.ray_actor_options.num_gpus",
        "FaceAttributeModel.user_config.max_batch_size",
        "FaceAttributeModel.user_config.batch_wait_timeout_s",
    }
)


# kuberay/rayservice.yaml: the GPU variant, plus the model store on the cluster's shared volume
# and GPU shares sized for its one-GPU nodes.
# On the cluster the Ingress stays on cpu-workers nodes (the worker groups' labels); config.gpu.yaml
# also serves one GPU machine, whose node has no such label, so it cannot say so.
KUBERAY_OVERRIDES = GPU_OVERRIDES | {
    "args.api_keys_file",  # on in the cluster: keys from a Secret (off on loopback)
    "FaceAttributeModel.user_config.model_uri",
    "FaceDetector.user_config.model_uri",
    # A cluster's GPU nodes hold one GPU each: a whole one per model replica, half for the
    # detector (config.gpu.yaml's quarters are for one GPU machine).
    "FaceAttributeModel.ray_actor_options.num_gpus",
    "CandidateModel.ray_actor_options.num_gpus",
    "FaceDetector.ray_actor_options.num_gpus",
    "FaceAttributeModel.autoscaling_config.max_replicas",  # up to 4 on the cluster
    "Ingress.ray_actor_options.label_selector.face-attributes/node-type",
}
# Outside the application: pods must listen on their own address, not loopback.
KUBERAY_HTTP_OVERRIDES = frozenset({"host"})


def flatten_app(app: dict[str, Any]) -> dict[str, Any]:
    """One application -> {dotted.path: value}, deployments keyed by their name."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    for key, value in app.items():
        if key == "deployments":
            for d in value:
                walk(d["name"], {k: v for k, v in d.items() if k != "name"})
        else:
            walk(key, value)
    return flat


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    fa, fb = flatten_app(a), flatten_app(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, object()) != fb.get(k, object())}


def serve_env() -> dict[str, str]:
    """serve.env: the environment Ray starts with wherever the project runs Serve."""
    lines = (Path(__file__).resolve().parents[1] / "serve.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def local_serve_env() -> dict[str, str]:
    """serve.env with its repository-relative paths made absolute, as `make serve` passes it."""
    root = Path(__file__).resolve().parents[1]
    return {k: str(root / v) if v.startswith("serve_app/") else v for k, v in serve_env().items()}
