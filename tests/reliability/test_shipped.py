"""What ships, run as shipped: `serve run config.yaml` with `make serve`'s environment on Ray's
real CPU count (2 on the CI box), only the port and the model store's paths changed (as
tests/shipped_differences.py requires). One run, in phases, each test checks one:

1. every socket of the run listens on loopback (Serve's per-replica gRPC aside, see below);
2. `latest` moves to v2 after the deploy: nothing changes, /metadata says a newer version exists;
3. under `make demo`-like load (32 clients) the model deployment reaches 2 RUNNING replicas in
   the dashboard's REST API (what the Serve tab draws) within 60 s, and every answer, the new
   replica's included, is v1 (the deploy's pin);
4. `python -m serve_app.rollout --to latest` with every default threshold promotes v2 under that
   load (shadow, 5%, 25%, 100%): then every answer is v2;
5. the shipped limits: a body 1 byte over 10 MB is a 413; 240 clients at once (more than the
   Ingress's 64 ongoing + 128 queued) get fast 503s with Retry-After, nothing else;
6. no request of the whole load failed;
7. after the load the model deployment goes back to 1 replica (downscale_delay_s 60);
8. Ctrl-C (SIGINT to `serve run`'s process group, as a terminal sends it) ends every process
   and frees every port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.harness import ROOT, free_port, wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.service_process import (
    ServeRun,
    listeners,
    make_serve_env,
    write_config,
)

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.own_ray]

SCALE_UP_LIMIT_S = 60.0  # the docs' promise: 2 replicas within a minute of the load
REPLICA = "ray::ServeRepli"  # comm of a Serve replica's process (15 characters)


def model_replicas(details: dict) -> int:
    app = details["applications"].get("face-attributes") or {}
    replicas = (app.get("deployments") or {}).get("FaceAttributeModel", {}).get("replicas", [])
    return sum(1 for r in replicas if r["state"] == "RUNNING")


def write_store(store: Path) -> None:
    """v1: resnet18 at 64x64 (the demo's backbone and size), random weights exported as
    training exports them: a model that keeps a CPU busy. v2: the same weights, another
    version (a healthy candidate). And the face detector."""
    from bench.artifacts import bench_artifact
    from model_store import load_artifact, save_artifact
    from train_job.face_detector import export

    source = load_artifact(bench_artifact("resnet18", 64))
    metadata = source.metadata.model_dump(exclude={"name", "version", "sha256", "digest"})
    metadata["metrics"] = {"val_auroc": 0.8}  # what the rollout's gate compares
    save_artifact(str(store), "face-attributes", source.model_bytes, metadata, version="v1")
    export(str(store), version="mtcnn-1")


def move_latest_to_v2(store: Path) -> None:
    from model_store import load_artifact, save_artifact

    v1 = load_artifact(str(store / "face-attributes" / "v1"))
    metadata = v1.metadata.model_dump(exclude={"name", "version", "sha256", "digest"})
    save_artifact(str(store), "face-attributes", v1.model_bytes, metadata, version="v2")


def loopback_only(run: ServeRun, port: int) -> dict:
    """Every LISTEN socket of every process the run started (Ray's GCS, raylet, agents,
    dashboard, workers; Serve's proxy, controller, replicas; HAProxy) is on loopback, but one
    allowed kind: a socket on `::` per Serve replica, Serve's gRPC transport between replicas,
    which Ray 2.60 binds to "[::]:0" whatever the node address (replica.py) and guards with Ray's
    token-auth interceptor (on: RAY_AUTH_MODE=token). HAProxy's admin socket is private."""
    procs = run.processes()
    found = listeners(procs)
    exposed = [x for x in found if not x.loopback]
    allowed = [x for x in exposed if x.proc.name.startswith(REPLICA) and x.address == "::"]
    private = all(
        (d / "admin.sock").exists()
        and (d / "admin.sock").stat().st_mode & 0o022 == 0
        and d.stat().st_mode & 0o077 == 0
        for d in run.node_dirs
    )
    return {
        "names": sorted({p.name for p in procs}),
        "ports": sorted({x.port for x in found}),
        "beyond_loopback": [str(x) for x in exposed if x not in allowed],
        "replica_sockets_on_any": len(allowed),
        "one_per_replica": len({x.proc.pid for x in allowed}) == len(allowed),
        "admin_socket_private": private and bool(run.node_dirs),
        "app_port": port,
    }


def rollout_to_latest(run: ServeRun, dashboard: str) -> subprocess.CompletedProcess:
    """Every threshold at its default (200 requests a step, p99 ratio 1.5, 10 ms slack)."""
    return subprocess.run(
        [sys.executable, "-m", "serve_app.rollout", "--to", "latest", "--url", run.url,
         "--dashboard", dashboard],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )  # fmt: skip


def auth_headers() -> dict[str, str]:
    """Ray's token for the dashboard's REST API, as Ray's own SDK sends it."""
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    return get_auth_headers_if_auth_enabled({})


def burst(url: str, clients: int, seconds: float) -> ClosedLoopLoad:
    with ClosedLoopLoad(url, clients=clients, images=images.solid(), max_seconds=60) as load:
        time.sleep(seconds)
    return load


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict:
    """The phases, in order; a phase that raises records its error and ends the run."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    tmp = tmp_path_factory.mktemp("shipped")
    store = tmp / "store"
    write_store(store)
    port = free_port()
    config = write_config(
        tmp, str(store / "face-attributes" / "latest"), port,
        detector_uri=str(store / "face-detector" / "latest"),
    )  # fmt: skip
    env = make_serve_env()
    out: dict = {}
    run = ServeRun(config, env, tmp / "serve.log", port)
    try:
        run.wait_ready()
        dashboard = run.dashboard_url()
        serve_api = ServeSubmissionClient(dashboard)
        http = httpx.Client(base_url=run.url, timeout=30)
        wait_for(lambda: http.get("/metadata").status_code == 200, 120, "the app")
        nodes = httpx.get(f"{dashboard}/api/v0/nodes", headers=auth_headers(), timeout=10)
        out["cpus"] = int(nodes.json()["data"]["result"]["result"][0]["resources_total"]["CPU"])
        out["exposure"] = loopback_only(run, port)

        move_latest_to_v2(store)
        pin = wait_for(
            lambda: (p := http.get("/metadata").json()["serving"]["pin"])["latest"] == "v2" and p,
            60,
            "the replica to see latest move",
        )
        out["pin"] = pin
        photo = images.solid(images.RED, size=(178, 218))
        with ClosedLoopLoad(run.url, clients=32, images=photo, max_seconds=400) as load:
            started = time.monotonic()
            wait_for(
                lambda: model_replicas(serve_api.get_serve_details()) >= 2,
                SCALE_UP_LIMIT_S + 30,
                "a second RUNNING model replica",
                interval=1,
            )
            out["scale_up_s"] = round(time.monotonic() - started, 1)
            scaled_at = time.time()
            time.sleep(5)  # answers from both replicas
            out["versions_after_scale_up"] = sorted({a.version for a in load.since(scaled_at)})
            rollout = rollout_to_latest(run, dashboard)
            out["rollout"] = {"code": rollout.returncode, "stdout": rollout.stdout[-4000:],
                              "stderr": rollout.stderr[-2000:]}  # fmt: skip
            promoted_at = time.time()
            time.sleep(3)
        out["versions"] = load.versions()
        out["versions_after_promote"] = sorted(
            {a.version for a in load.since(promoted_at) if a.status == 200}
        )
        out["load"] = {"answers": load.count(), "failures": load.describe_failures()}
        out["load_failed"] = len(load.failures())

        big = http.post(
            "/classify", content=b"\xff" * (10 * 1024 * 1024 + 1),
            headers={"Content-Type": "image/jpeg"},
        )  # fmt: skip
        out["over_10_mb"] = (big.status_code, big.json().get("error"))
        flood = burst(run.url, 240, 6)
        statuses = flood.result.statuses
        out["flood"] = {
            "statuses": {str(k): v for k, v in statuses.items()},
            "bad_503": flood.result.bad_503,
            "p50_503_s": sorted(flood.result.latencies_503)[len(flood.result.latencies_503) // 2]
            if flood.result.latencies_503 else None,
            "sample_503": next(
                ((a.error_code, a.retry_after, a.detail) for a in flood.answers if a.status == 503),
                None,
            ),
        }  # fmt: skip

        stopped = time.monotonic()
        wait_for(
            lambda: model_replicas(serve_api.get_serve_details()) == 1,
            180,
            "back to one model replica",
            interval=2,
        )
        out["scale_down_s"] = round(time.monotonic() - stopped, 1)
        http.close()
    except Exception as e:  # the phase that failed, for its test to show
        out["error"] = f"{type(e).__name__}: {e}\n{run.log()}"
    finally:
        ports = set(run.ports)
        run.interrupt()  # Ctrl-C
        run.wait_gone(90)
        out["left_after_ctrl_c"] = [f"{p.name}({p.pid})" for p in run.survivors()]
        out["ports_left"] = sorted(p for p in ports if p in run.bound_ports())
        run.kill_everything()
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "shipped.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def phase(shipped: dict, *keys: str):
    missing = [k for k in keys if k not in shipped]
    assert not missing, shipped.get("error", f"phase did not run: {missing}")
    return shipped[keys[0]] if len(keys) == 1 else [shipped[k] for k in keys]


def test_it_ran_on_rays_real_cpu_count(shipped):
    assert phase(shipped, "cpus") == os.cpu_count()


def test_every_socket_listens_on_loopback(shipped):
    exposure = phase(shipped, "exposure")
    assert {"gcs_server", "raylet", "haproxy"} <= set(exposure["names"]), exposure
    assert {exposure["app_port"], 8404, 9101} <= set(exposure["ports"]), exposure
    assert exposure["beyond_loopback"] == [], exposure
    assert exposure["one_per_replica"] and exposure["admin_socket_private"], exposure


def test_a_moved_latest_is_announced_not_served(shipped):
    pin = phase(shipped, "pin")
    assert pin["version"] == "v1" and pin["newer_available"] and pin["latest"] == "v2"


def test_the_model_scales_to_two_replicas_within_a_minute_serving_the_pinned_version(shipped):
    scale_up_s, versions = phase(shipped, "scale_up_s", "versions_after_scale_up")
    assert scale_up_s <= SCALE_UP_LIMIT_S
    assert versions == ["v1"]  # the new replica loaded the pin, not the moved `latest`


def test_the_rollout_to_latest_promotes_under_load_at_default_thresholds(shipped):
    rollout, after = phase(shipped, "rollout", "versions_after_promote")
    assert rollout["code"] == 0, rollout
    assert "promoted: v2 is the stable version" in rollout["stdout"], rollout
    assert after == ["v2"]


def test_no_request_failed_under_load_scale_up_and_rollout(shipped):
    failed, load = phase(shipped, "load_failed", "load")
    assert failed == 0, load
    versions = phase(shipped, "versions")
    assert versions[0] == "v1" and versions[-1] == "v2"


def test_the_shipped_limits_answer_as_documented(shipped):
    over, flood = phase(shipped, "over_10_mb", "flood")
    assert over == (413, "payload_too_large")
    statuses = flood["statuses"]
    assert set(statuses) <= {"200", "503"}, flood  # nothing else: no reset, no timeout
    assert statuses.get("503", 0) > 0 and flood["bad_503"] == 0, flood
    assert flood["p50_503_s"] < 1.0, flood


def test_the_model_scales_back_to_one_replica(shipped):
    assert phase(shipped, "scale_down_s") <= 180


def test_ctrl_c_stops_every_process_and_frees_every_port(shipped):
    assert shipped["left_after_ctrl_c"] == [] and shipped["ports_left"] == [], shipped
