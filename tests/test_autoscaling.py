"""The model deployment scales up under load and back down when it stops, as seen through the
dashboard's REST API (what `serve status` and the dashboard's Serve tab show)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests import images
from tests.harness import deployment, wait_for

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def running_model_replicas(served) -> int:
    details = served.client.get_serve_details()
    app = details["applications"]["face-attributes"]
    replicas = app["deployments"]["FaceAttributeModel"]["replicas"]
    return sum(1 for r in replicas if r["state"] == "RUNNING")


def test_model_deployment_scales_up_and_down(served):
    config = served.base_config(max_batch_size=2, batch_wait_timeout_s=0.02)
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model["autoscaling_config"].update(
        min_replicas=1, initial_replicas=1, max_replicas=2, target_ongoing_requests=2,
        upscale_delay_s=1, downscale_delay_s=4, look_back_period_s=2, metrics_interval_s=0.5,
    )  # fmt: skip
    served.deploy(config)
    try:
        assert running_model_replicas(served) == 1
        stop = threading.Event()
        errors: list[int] = []

        def load():
            with httpx.Client(base_url=served.url, timeout=60) as c:
                while not stop.is_set():
                    r = c.post(
                        "/classify",
                        files={"image": ("a.jpg", images.solid(size=(800, 800)), "image/jpeg")},
                    )
                    if r.status_code != 200:
                        errors.append(r.status_code)

        threads = [threading.Thread(target=load) for _ in range(12)]
        for t in threads:
            t.start()
        try:
            wait_for(
                lambda: running_model_replicas(served) == 2,
                90,
                "a second model replica",
                interval=1,
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        wait_for(
            lambda: running_model_replicas(served) == 1,
            90,
            "scale back down to one replica",
            interval=1,
        )
    finally:
        served.deploy(served.base_config())
