"""config.yaml and its GPU variant: valid for Serve, typed args valid, settings consistent."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_app
from serve_app.config import AppArgs, ModelConfig
from serve_app.rollout.config import MonitorConfig
from tests.config_diff import GPU_OVERRIDES, differing_keys
from tests.harness import ROOT, deployment


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "config.gpu.yaml"])
def test_config_is_a_valid_serve_config(name):
    config = load(name)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    args = AppArgs.model_validate(app["args"])
    build_app(args)  # the import path resolves and the graph builds with these args
    assert {d["name"] for d in app["deployments"]} == {
        "FaceAttributeModel",
        "CandidateModel",
        "FaceDetector",
        "RolloutMonitor",
        "Ingress",
    }
    monitor = deployment(app, "RolloutMonitor")
    assert MonitorConfig.model_validate(monitor["user_config"]).rollout.mode == "off"


@pytest.mark.parametrize("name", ["config.yaml", "config.gpu.yaml"])
def test_model_settings_are_consistent(name):
    app = load(name)["applications"][0]
    model = deployment(app, "FaceAttributeModel")
    candidate = deployment(app, "CandidateModel")
    user = ModelConfig.model_validate(model["user_config"])
    args = AppArgs.model_validate(app["args"])
    ingress = deployment(app, "Ingress")
    # The model's requests are the ingress's batched calls: it must admit every open call of
    # every ingress replica, and scale up before a saturated ingress keeps all its calls open.
    most_calls = args.model_calls_in_flight * ingress["autoscaling_config"]["max_replicas"]
    assert model["max_ongoing_requests"] >= most_calls
    # The candidate takes the same calls during a canary; it has no replica without a rollout.
    assert candidate["max_ongoing_requests"] >= most_calls
    assert candidate["autoscaling_config"]["min_replicas"] == 0
    assert candidate["ray_actor_options"] == model["ray_actor_options"]
    assert model["autoscaling_config"]["target_ongoing_requests"] < args.model_calls_in_flight
    assert args.images_per_model_call >= user.max_batch_size  # one call can fill a forward
    assert 0 < model["max_queued_requests"] < 10_000
    assert 0 < ingress["max_queued_requests"] < 10_000
    assert args.max_waiting_images < 10_000


def test_local_config_is_safe_by_default():
    config = load("config.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["request_timeout_s"] > 0
    model = deployment(config["applications"][0], "FaceAttributeModel")
    assert model["ray_actor_options"]["num_gpus"] == 0


def test_gpu_variant_differs_only_where_documented():
    base = load("config.yaml")
    gpu = load("config.gpu.yaml")
    assert {k: v for k, v in base.items() if k != "applications"} == {
        k: v for k, v in gpu.items() if k != "applications"
    }
    assert differing_keys(base["applications"][0], gpu["applications"][0]) == GPU_OVERRIDES
    gpu_model = deployment(gpu["applications"][0], "FaceAttributeModel")
    assert gpu_model["ray_actor_options"]["num_gpus"] > 0
    assert AppArgs.model_validate(gpu["applications"][0]["args"]).precision == "float16"


def test_bad_args_fail_with_the_key_named():
    with pytest.raises(ValueError, match="max_body_mb"):
        AppArgs.model_validate({"max_body_mb": -1})
    with pytest.raises(ValueError, match="max_bodymb"):
        AppArgs.model_validate({"max_bodymb": 10})  # a typo is not silently ignored
    with pytest.raises(ValueError, match="max_batch_size"):
        ModelConfig.model_validate({"model_uri": "m", "max_batch_size": 0})


def test_cuda_device_without_gpu_fails_clearly():
    import torch

    from serve_app.common.device import choose_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="num_gpus"):
        choose_device("cuda")
    assert choose_device("auto").type == "cpu"
