"""Scaling nodes, node loss under load, training and a batch job across nodes on the local
cluster.

One LocalCluster start for all of it: tests/cluster/operations_scenario.py runs the phases in
sequence in a subprocess (its own Ray) and writes one JSON; each test here checks its phase.
The JSON is kept as test-output/cluster_operations.json (the figures in docs/autoscaling.md
"Across nodes" and docs/reliability.md "Node loss" come from it).

Tests marked xfail(strict=True) record a defect found here, reported and not fixed in this
change (the code is another change's): each fails the suite once the defect is fixed, so its
marker goes with the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster import batch_scenario
from tests.harness import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.own_ray]

# A failure counts as fast under this: a refusal, not a wait for the replacement (~20 s here).
# Answers take ~0.1 s; the fix proposed for the model call's wait refuses after 1 s.
FAST_S = 2.0
# Where a lost node's replacement must be serving again: GCS declares a node dead after its
# health checks fail (3 s x 5 by default, ~14 s measured), then a new node and replica start.
RECOVERY_LIMIT_S = 60.0


@pytest.fixture(scope="module")
def operations(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cluster-ops") / "operations.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.cluster.operations_scenario", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=720,
    )
    assert out.exists(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "cluster_operations.json").write_text(json.dumps(result, indent=2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert result["left_processes"] == []  # the cluster ended every process it started
    return result


def phase(operations: dict, name: str) -> dict:
    result = operations[name]
    assert "error" not in result, json.dumps(result, indent=1)[-6000:]
    return result


def test_gpu_config_places_model_on_gpu_nodes_and_ingress_on_cpu_nodes(operations):
    result = phase(operations, "placement")
    assert result["status"] == 200
    types = result["nodes"]
    model, ingress = result["replicas"]["FaceAttributeModel"], result["replicas"]["Ingress"]
    assert model and ingress
    for replica in model:
        assert replica["node_id"] == replica["actor_node_id"]  # Serve and Ray agree
        assert types[replica["node_id"]] == "gpu-workers"
    for replica in ingress:
        assert replica["node_id"] == replica["actor_node_id"]
        assert types[replica["node_id"]] == "cpu-workers"
    # device: auto on a GPU-labelled node where torch sees no CUDA: one line per replica.
    assert len(result["auto_log_lines"]) == len(model), result["auto_log_lines"]
    assert all(r["node_id"] in line for r, line in zip(model, result["auto_log_lines"]))


def test_device_cuda_refuses_to_start_and_names_the_node(operations):
    result = phase(operations, "cuda_refused")
    assert result["status"].endswith("DEPLOY_FAILED")
    assert "torch sees no CUDA device" in result["message"]
    assert any(f"Ray node id {n}" in result["message"] for n in result["gpu_node_ids"]), result


def test_model_scales_onto_a_new_gpu_node_and_both_go_after_the_load(operations):
    scale = phase(operations, "scale")
    t = scale["timeline_s"]
    order = [
        "load_start",
        "replica_requested",
        "node_up",
        "replica_ready",
        "load_stop",
        "scale_down_replica",
        "node_removed",
    ]
    assert [t[e] for e in order] == sorted(t[e] for e in order), t
    # The new replica ran on the node the autoscaler added, a gpu-workers node.
    assert scale["new_node"] and scale["new_node"] != scale["first_node"]
    assert scale["new_replica_node"] == scale["new_node"]
    assert t["node_up"] <= t["first_request_on_new_replica"] <= t["load_stop"], t
    assert scale["load"]["statuses"] == {"200": scale["load"]["answers"]}


def test_model_node_loss_replacement_replica_on_a_healthy_gpu_node(operations):
    loss = phase(operations, "model_node_loss")
    assert loss["killed_node_type"] == "gpu-workers"
    assert loss["node_processes_alive_at_end"] == 0
    assert loss["replacement_node"] != loss["killed_node"]
    assert loss["replacement_node_type"] == "gpu-workers"
    assert loss["replacement_node_state"] == "ALIVE"
    assert loss["recovered_after_s"] < RECOVERY_LIMIT_S
    assert set(loss["statuses"]) <= {"200", "503", "timeout"}, loss["statuses"]  # no 500


def test_model_node_loss_clients_see_only_fast_503s(operations):
    """Old code: Serve's router held the ingress's model calls while no model replica ran, and
    clients waited for the 10 s timeout; call_model now bounds the wait for a replica (1 s)."""
    assert_only_fast_503s(phase(operations, "model_node_loss"))


def test_ingress_node_loss_replacement_replica_on_another_node(operations):
    loss = phase(operations, "ingress_node_loss")
    assert loss["killed_node_type"] == "cpu-workers"
    assert loss["replacement_node"] != loss["killed_node"]
    assert loss["replacement_node_state"] == "ALIVE"
    assert loss["recovered_after_s"] < RECOVERY_LIMIT_S


def test_ingress_node_loss_replacement_on_a_cpu_node(operations):
    """Old config: the Ingress asked only for num_cpus and its replacement took the gpu-workers
    node's spare CPUs; it now selects cpu-workers by label (cluster.yaml, config.gpu.yaml)."""
    assert phase(operations, "ingress_node_loss")["replacement_node_type"] == "cpu-workers"


def test_ingress_node_loss_clients_see_only_fast_503s(operations):
    """Old HAProxy config (Ray's as rendered): the 4 requests in flight lost their connection and
    4 were held past 10 s by Serve's fallback proxy until a new Ingress replica registered;
    serve_app/haproxy_guard.py's fail_fast answers them 503 with Retry-After."""
    assert_only_fast_503s(phase(operations, "ingress_node_loss"))


def assert_only_fast_503s(loss: dict) -> None:
    bad = [
        f
        for f in loss["failures"]
        if f["status"] != 503 or f["retry_after"] is None or f["latency_s"] > FAST_S
    ]
    assert not bad, json.dumps({"statuses": loss["statuses"], "first_bad": bad[:5]}, indent=1)


def test_training_spreads_over_two_nodes_and_resumes_on_a_replacement(operations):
    train = phase(operations, "training")
    assert train["returncode"] == 0, train["output_tail"]
    first, resumed = train["first_workers_nodes"], train["resumed_workers_nodes"]
    # Two workers, two different cpu-workers nodes (read from Ray's state API).
    assert len(first) == 2 and set(first.values()) == {"cpu-workers"}, first
    assert train["killed_node"] in first
    assert train["killed_node_state"] == "DEAD"
    # The new worker group: two cpu-workers nodes, the lost one not among them, one of them
    # a node that was not in the first group (the replacement).
    assert len(resumed) == 2 and set(resumed.values()) == {"cpu-workers"}, resumed
    assert train["killed_node"] not in resumed
    assert set(resumed) - set(first)
    # Killed mid-epoch after the n-th checkpoint: resumed from it (epochs count from 0).
    last = train["checkpoints_before_kill"] - 1
    assert train["resumed_from"] == [
        f"Resuming cluster-train from its checkpoint after epoch {last}"
    ]
    assert train["artifact"]["epochs_trained"] == train["epochs"]


def test_batch_job_loses_a_model_node_and_writes_every_input_once(operations):
    """The batch job's two model actors on two gpu-workers nodes, one node lost mid-run: the
    job goes on and writes every input exactly once (tests/cluster/batch_scenario.py)."""
    batch_scenario.check(phase(operations, "batch"))
