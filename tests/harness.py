"""Test harness: a real Ray instance, the Serve app deployed from config.yaml, an HTTP client."""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve

ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "face-attributes"
INGRESS_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the thing may not be up yet
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def load_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def deployment(app: dict, name: str) -> dict:
    return next(d for d in app["deployments"] if d["name"] == name)


@dataclass
class RayCluster:
    gcs_address: str
    dashboard_url: str

    @classmethod
    def start(cls, num_cpus: int) -> RayCluster:
        """The session's shared Ray, with tests/shipped_differences.py's one change of a Ray
        setting (in the environment its processes start with, not this process's: a `serve
        run` or a cluster a test starts later runs with Ray's defaults)."""
        from tests.shipped_differences import INGRESS_DRAIN_S

        dashboard_port = free_port()
        before = os.environ.get(INGRESS_DRAIN_ENV)
        os.environ[INGRESS_DRAIN_ENV] = str(INGRESS_DRAIN_S)
        try:
            ctx = cls._init(num_cpus, dashboard_port)
        finally:
            if before is None:
                os.environ.pop(INGRESS_DRAIN_ENV, None)
            else:
                os.environ[INGRESS_DRAIN_ENV] = before
        return cls(ray.get_runtime_context().gcs_address, f"http://{ctx.dashboard_url}")

    @staticmethod
    def _init(num_cpus: int, dashboard_port: int):
        return ray.init(
            num_cpus=num_cpus,  # more logical CPUs than cores: replicas ask for fractions
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            log_to_driver=False,
            # Export metrics every 2 s instead of 10 s so metric tests do not wait long.
            _system_config={"metrics_report_interval_ms": 2000},
        )

    def stop(self) -> None:
        ray.shutdown()


class ServeTestbed:
    def __init__(self, cluster: RayCluster, http_port: int, model_store: Path):
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        self.cluster = cluster
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.model_store = model_store
        self.client = ServeSubmissionClient(cluster.dashboard_url)
        serve.start(http_options=self.http_options())
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self._deployed: dict | None = None
        self.api_key: str | None = None  # the harness's own key while the app has keys

    def http_options(self) -> dict:
        options = dict(load_config()["http_options"])
        options["port"] = self.http_port
        return options

    def model_uri(self, version: str = "latest") -> str:
        return str(self.model_store / APP_NAME / version)

    def base_config(self, model_version: str = "v1", **user_config: Any) -> dict:
        """config.yaml with the session's store, one replica each (what each change is and why:
        tests/shipped_differences.py)."""
        config = load_config()
        config["http_options"] = self.http_options()
        app = config["applications"][0]
        app["args"].update(max_body_mb=1, max_image_pixels=4_000_000, device="cpu")
        model = deployment(app, "FaceAttributeModel")
        model["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
        model["user_config"].update({"model_uri": self.model_uri(model_version), **user_config})
        candidate = deployment(app, "CandidateModel")
        # A candidate replica a rollout left (it goes after the autoscaler's look-back) that a
        # later test's redeploy restarts must find a model: the stable's, not the code default.
        candidate["user_config"] = dict(model["user_config"])
        ingress = deployment(app, "Ingress")
        ingress["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
        detector = deployment(app, "FaceDetector")
        detector["user_config"]["model_uri"] = self.detector_uri()
        detector["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
        return config

    def detector_uri(self) -> str:
        return str(self.model_store / "face-detector" / "latest")

    def deploy_keyed(self, config: dict, api_key: str, timeout: float = 120) -> None:
        """As deploy, for a config with api_keys_file: ``api_key`` is one of its keys."""
        self.api_key = api_key
        self.deploy(config, timeout)

    def deploy(self, config: dict, timeout: float = 120) -> None:
        """Apply a config declaratively (as `serve deploy`) and wait until it is live."""
        if not config["applications"][0]["args"].get("api_keys_file"):
            self.api_key = None
        if config == self._deployed and self._is_live(config):
            return
        self.client.deploy_applications(copy.deepcopy(config))
        self._deployed = copy.deepcopy(config)
        wait_for(lambda: self._is_live(config), timeout, "the application to apply its config")

    def _is_live(self, config: dict) -> bool:
        status = serve.status().applications.get(APP_NAME)
        if status is None or status.status != "RUNNING":
            return False
        from serve_app.config import AppArgs, ModelConfig

        wanted = deployment(config["applications"][0], "FaceAttributeModel")["user_config"]
        meta = self.http.get("/metadata", headers=self.auth_headers())
        if meta.status_code != 200:
            return False
        serving = meta.json()["serving"]
        args = AppArgs.model_validate(config["applications"][0]["args"])
        return (
            serving["config_id"] == ModelConfig.model_validate(wanted).fingerprint()
            and serving["args_id"] == args.fingerprint()
            and meta.json()["rollout"]["config"] == wanted_rollout(config)
        )

    def metadata(self) -> dict:
        return self.http.get("/metadata", headers=self.auth_headers()).json()

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def shutdown(self) -> None:
        self.http.close()
        serve.shutdown()


def wanted_rollout(config: dict) -> dict:
    """The rollout settings ``config`` asks for (RolloutMonitor's user_config), in full: a test
    that left a rollout on (or a rollout command that failed) is undone by the next deploy."""
    from serve_app.rollout.config import MonitorConfig

    app = config["applications"][0]
    entry = next((d for d in app["deployments"] if d["name"] == "RolloutMonitor"), {})
    return MonitorConfig.model_validate(entry.get("user_config") or {}).rollout.model_dump()
