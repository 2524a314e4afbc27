"""Crashes: a model replica killed under load, a Ray Train worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ray.util.state import list_actors

from model_store import load_artifact
from tests.harness import wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import replica_pids


def test_model_replica_killed_under_load_recovers(served, figures):
    with ClosedLoopLoad(served.url, clients=6, max_seconds=90) as load:
        wait_for(lambda: load.count() > 30, 30, "traffic before the crash")
        (pid,) = replica_pids(served)["FaceAttributeModel"]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            after = [a.status for a in load.since(killed_at)]
            return len(after) >= 20 and all(s == 200 for s in after[-20:])

        wait_for(recovered, 30, "20 successful requests in a row after the crash", interval=0.2)
        recovery_s = time.time() - killed_at
    failed = [(a.end - killed_at, a.status) for a in load.failures()]
    assert replica_pids(served)["FaceAttributeModel"] != [pid]
    assert recovery_s < 30
    assert all(s in (503,) for _, s in failed), failed  # failures are clean 503s, not hangs or 500s
    figures.update(
        requests=load.count(),
        failed_in_window=len(failed),
        failed_statuses=sorted({s for _, s in failed}),
        recovered_within_s=round(recovery_s, 1),
    )


def registered_checkpoints(run_dir) -> int:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return 0
    try:
        state = json.loads(snapshot.read_text())
    except ValueError:  # being written
        return 0
    return len(state.get("checkpoint_results") or [])


@pytest.mark.train
def test_training_worker_killed_mid_run_resumes_from_checkpoint(
    ray_cluster, train_data, tmp_path, figures
):
    storage = tmp_path / "ray_results"
    store = tmp_path / "store"
    cmd = [
        sys.executable, "-m", "train_job", "--data-dir", str(train_data), "--model-store", str(store),
        "--backbone", "resnet18", "--image-size", "32", "--max-samples", "1024", "--epochs", "3",
        "--batch-size", "32", "--num-workers", "2", "--dataloader-workers", "0",
        "--storage-path", str(storage), "--run-name", "crash-me", "--max-failures", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address},
    )  # fmt: skip
    try:
        # A checkpoint counts once Ray Train's controller has registered it in its snapshot; kill
        # mid-epoch a few seconds later, when the next epoch is under way.
        wait_for(
            lambda: registered_checkpoints(storage / "crash-me") >= 1,
            240,
            "a registered checkpoint",
        )
        time.sleep(4)
        workers = list_actors(
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        )
        assert workers, "no Ray Train worker alive"
        victim = workers[0]["pid"]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "Resuming crash-me from its checkpoint after epoch" in out, out[-6000:]
    meta = load_artifact(str(store / "face-attributes" / "latest")).metadata
    assert meta.training["epochs_trained"] == 3
    figures.update(
        killed_worker_pid=victim,
        finished_after_kill_s=round(time.time() - killed_at, 1),
        resumed_from=next(
            line.split("after epoch")[1].strip()
            for line in out.splitlines()
            if "after epoch" in line
        ),
        final_val_auroc=meta.metrics["val_auroc"],
    )
