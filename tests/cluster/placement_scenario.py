"""Placement on the local cluster: run as a script (own Ray, not the test session's), JSON out.

    python -m tests.cluster.placement_scenario OUT.json

Starts LocalCluster (cluster.yaml's types; at most one worker of each), deploys config.gpu.yaml
(num_gpus as shipped; num_cpus scaled; model_uri -> a tiny artifact; device: auto), serves one
real request, and records where Serve's replicas run, read from Serve's details (dashboard
REST) and Ray's state API. Then redeploys with device: cuda and records Serve's failure message.
Output shape: {"nodes": {node_id: type}, "replicas": {deployment: [{node_id, actor_node_id,
node_type}]}, "status": int, "auto_log_lines": [str], "cuda": {"status", "message"},
"gpu_node_ids": [str], "timings_s": {...}}.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before `import ray`: Ray reads it on import
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(ROOT))

from tests.config_diff import serve_env  # noqa: E402

# serve.env's fast path buffers replica logs 1,000 records at a time: a replica's start-up lines
# (device: auto -> cpu) would still sit in the buffer when this scenario ends. One record.
os.environ.setdefault("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
# serve.env, as tests/conftest.py and `make serve` apply it (the guard's path made absolute).
for _name, _value in serve_env().items():
    _value = str(ROOT / _value) if _value.startswith("serve_app/") else _value
    os.environ.setdefault(_name, _value)

import httpx  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from ray import serve  # noqa: E402
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient  # noqa: E402
from ray.util.state import list_actors, list_nodes  # noqa: E402

from local_cluster.cluster import (  # noqa: E402
    LABEL_NODE_TYPE,
    LocalCluster,
    free_port,
    scale_serve_config,
    wait_for,
)
from tests import images  # noqa: E402
from tests.artifacts import write_tiny_artifact  # noqa: E402

APP = "face-attributes"
AUTO_LOG = "device: auto -> cpu"


def gpu_config(model_uri: str, device: str, port: int) -> dict:
    config = scale_serve_config(yaml.safe_load((ROOT / "config.gpu.yaml").read_text()))
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["device"] = device
    for deployment in app["deployments"]:
        if deployment["name"] == "FaceAttributeModel":
            deployment["user_config"]["model_uri"] = model_uri
    return config


def node_types() -> dict[str, str]:
    return {n.node_id: n.labels.get(LABEL_NODE_TYPE, "?") for n in list_nodes(detail=True)}


def placement(client: ServeSubmissionClient) -> dict[str, list[dict]]:
    """Serve's replica details, each checked against Ray's own record of the actor."""
    types = node_types()
    actors = {a.actor_id: a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)}
    app = client.get_serve_details()["applications"][APP]
    out: dict[str, list[dict]] = {}
    for name, deployment in app["deployments"].items():
        out[name] = [
            {
                "node_id": r["node_id"],
                "actor_node_id": actors[r["actor_id"]].node_id if r["actor_id"] in actors else None,
                "node_type": types.get(r["node_id"], "?"),
                "state": r["state"],
            }
            for r in deployment["replicas"]
        ]
    return out


def deployment_status(name: str):
    status = serve.status().applications.get(APP)
    return None if status is None else status.deployments.get(name)


def auto_log_lines(temp_dir: str) -> list[str]:
    """Lines of the model replicas' logs that say auto fell back to CPU."""
    # session_latest only: it is a link to the session_* dir, which a wider glob would read twice.
    logs = Path(temp_dir).glob("session_latest/logs/serve/replica_*FaceAttributeModel*.log")
    return [line for path in logs for line in path.read_text().splitlines() if AUTO_LOG in line]


def diagnose(cluster: LocalCluster) -> dict:
    """What the cluster looked like when a wait timed out."""
    import subprocess

    out: dict = {}
    with contextlib.suppress(Exception):
        status = serve.status().applications.get(APP)
        out["app"] = (
            None
            if status is None
            else {
                "status": str(status.status),
                "message": status.message,
                "deployments": {
                    n: [str(d.status), d.message] for n, d in status.deployments.items()
                },
            }
        )
    with contextlib.suppress(Exception):
        out["nodes"] = [(n.node_id, n.state, n.labels.get(LABEL_NODE_TYPE)) for n in list_nodes()]
    with contextlib.suppress(Exception):
        out["actors"] = [(a.class_name, a.state, a.node_id) for a in list_actors(detail=True)]
    with contextlib.suppress(Exception):
        out["ray_status"] = subprocess.run(
            ["ray", "status", f"--address={cluster.address}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    return out


def main(out_path: str) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    result: dict = {"timings_s": timings}
    store = tempfile.mkdtemp(prefix="lc-store-")
    write_tiny_artifact(store, version="v1")
    model_uri = str(Path(store) / APP / "v1")
    cluster = LocalCluster(max_workers={"cpu-workers": 1, "gpu-workers": 1})
    cluster.start()
    timings["head_up"] = round(time.monotonic() - t0, 1)
    try:
        # State API calls find the cluster from RAY_ADDRESS (auto-detection sees two addresses).
        os.environ["RAY_ADDRESS"] = cluster.address
        ray.init(cluster.address, log_to_driver=False)
        port = free_port()
        client = ServeSubmissionClient(cluster.dashboard_url)
        client.deploy_applications(gpu_config(model_uri, "auto", port))
        wait_for(lambda: serve.status().applications[APP].status == "RUNNING", 240, "app RUNNING")
        timings["app_running"] = round(time.monotonic() - t0, 1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            response = wait_for(
                lambda: (
                    (
                        r := http.post("/classify", files={"image": ("a.jpg", images.solid())})
                    ).status_code
                    == 200
                    and r
                ),
                60,
                "a 200 from /classify",
            )
            result["status"] = response.status_code
        result["nodes"] = node_types()
        result["replicas"] = placement(client)
        result["gpu_node_ids"] = [i for i, t in result["nodes"].items() if t == "gpu-workers"]
        result["auto_log_lines"] = auto_log_lines(cluster.temp_dir)

        client.deploy_applications(gpu_config(model_uri, "cuda", port))
        failed = wait_for(
            lambda: (
                (d := deployment_status("FaceAttributeModel")) and d.status == "DEPLOY_FAILED" and d
            ),
            240,
            "device: cuda to fail",
        )
        timings["cuda_refused"] = round(time.monotonic() - t0, 1)
        result["cuda"] = {"status": str(failed.status), "message": failed.message}
        result["nodes_after_cuda"] = node_types()
    except Exception:
        result["diagnosis"] = diagnose(cluster)
        raise
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            cluster.shutdown(keep_logs="diagnosis" in result)  # logs kept to debug a failure
            result["temp_dir"] = cluster.temp_dir
            result["left_processes"] = cluster.processes()
            timings["total"] = round(time.monotonic() - t0, 1)
            Path(out_path).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
