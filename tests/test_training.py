"""Ray Train runs on a real (shared) Ray instance: DDP on CPU with gloo, 2 workers."""

from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

from model_store import load_artifact
from tests.harness import ROOT, deployment
from train_job.synthetic import RENDERED

pytestmark = [pytest.mark.train, pytest.mark.slow]

FAST = [
    "--backbone",
    "resnet18",
    "--batch-size",
    "32",
    "--num-workers",
    "2",
    "--dataloader-workers",
    "0",
]


def rendered_auroc(meta) -> float:
    per_label = meta.metrics["val_auroc_per_label"]
    return sum(per_label[a] for a in RENDERED) / len(RENDERED)


def test_ray_job_submit_trains_ddp_and_exports_a_servable_model(ray_cluster, train_data, tmp_path):
    store = tmp_path / "store"
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit",
        "--address", ray_cluster.dashboard_url, "--working-dir", str(ROOT), "--",
        "python", "-m", "train_job", "--data-dir", str(train_data), "--model-store", str(store),
        "--image-size", "64", "--epochs", "4", "--max-samples", "1600", "--lr", "2e-3",
        "--storage-path", str(tmp_path / "ray_results"), "--run-name", "job-ddp", *FAST,
    ]  # fmt: skip
    job = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "val AUROC" in job.stdout  # the report was printed

    artifact = load_artifact(str(store / "face-attributes" / "latest"))
    meta = artifact.metadata
    print(f"val AUROC {meta.metrics['val_auroc']}, rendered {rendered_auroc(meta):.4f}, "
          f"test {meta.metrics['test_auroc']}, {meta.training['duration_s']} s")  # fmt: skip
    assert rendered_auroc(meta) >= 0.9
    assert meta.training["num_workers"] == 2 and meta.training["samples"]["train"] == 1600
    assert meta.input_size == (64, 64) and meta.output_kind == "probabilities"
    assert set(meta.metrics["test_auroc_per_label"]) >= set(RENDERED)

    # Export equals eager: the best Ray checkpoint vs the TorchScript file on real images.
    import ray.train

    from train_job.config import TrainConfig
    from train_job.export import load_best_model
    from train_job.train_loop import build_datamodule

    eager = load_best_model(ray.train.Checkpoint(meta.training["checkpoint"]))
    cfg = TrainConfig(
        data_dir=str(train_data), image_size=64, max_samples=1600, dataloader_workers=0
    )
    images, _ = next(
        iter(torch.utils.data.DataLoader(build_datamodule(cfg).dataset("test"), batch_size=8))
    )
    scripted = torch.jit.load(io.BytesIO(artifact.model_bytes))
    with torch.inference_mode():
        torch.testing.assert_close(
            scripted(images), torch.sigmoid(eager(images)), atol=1e-4, rtol=1e-4
        )

    # The serving code loads it (no training imports on that path).
    from serve_app.model.inference import forward, load_model

    served = load_model(str(store / "face-attributes" / "latest"), torch.device("cpu"))
    probs = forward(served, torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    assert probs.shape == (3, 40) and float(probs.min()) >= 0 and float(probs.max()) <= 1


def test_rerun_with_same_name_resumes_from_checkpoint_and_the_gate_refuses_its_rollout(
    ray_cluster, train_data, tmp_path, serve_testbed
):
    """The second run resumes, exports, and asks to roll its version out (--rollout) to the
    running service, which serves a version with validation AUROC 0.99: the gate refuses and
    says why, the run exits with the rollout's status 2, and the service is untouched."""
    from tests.artifacts import write_tiny_artifact

    common = [
        sys.executable, "-m", "train_job", "--data-dir", str(train_data),
        "--model-store", str(tmp_path / "store"), "--image-size", "32", "--max-samples", "256",
        "--storage-path", str(tmp_path / "ray_results"), "--run-name", "resume-me", *FAST,
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address, "RAY_AUTH_MODE": "token"}
    first = subprocess.run(
        [*common, "--epochs", "1"], capture_output=True, text=True, timeout=600, env=env
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Resuming" not in first.stdout + first.stderr

    strong = write_tiny_artifact(
        str(tmp_path / "serving"), version="strong", metrics={"val_auroc": 0.99}
    )
    config = serve_testbed.base_config()
    deployment(config["applications"][0], "FaceAttributeModel")["user_config"]["model_uri"] = (
        strong.uri
    )
    serve_testbed.deploy(config)
    rollout_args = f"--url {serve_testbed.url} --dashboard {ray_cluster.dashboard_url}"
    try:
        second = subprocess.run(
            [*common, "--epochs", "2", "--rollout", "--rollout-args", rollout_args],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert serve_testbed.metadata()["version"] == "strong"
    finally:
        serve_testbed.deploy(serve_testbed.base_config())
    log = second.stdout + second.stderr
    assert second.returncode == 2, log[-4000:]
    assert "Resuming resume-me from its checkpoint after epoch 0" in log
    assert "is below the serving version strong's 0.9900" in log, log[-3000:]
    assert "--max-auroc-drop" in log
    meta = load_artifact(str(tmp_path / "store" / "face-attributes" / "latest")).metadata
    assert meta.training["epochs_trained"] == 2
    assert len(list((tmp_path / "store" / "face-attributes").iterdir())) == 3  # 2 versions + latest


def leftover_temp_dirs(run_name: str) -> set[str]:
    """Directories a run can leave in the workers' temp dir (the same machine and TMPDIR here):
    a ModelCheckpoint's mkdtemp and RayTrainReportCallback's staging prefix."""
    tmp = tempfile.gettempdir()
    return set(glob.glob(os.path.join(tmp, "lightning-best-*"))) | set(
        glob.glob(os.path.join(tmp, f"lightning_checkpoints-*-name={run_name}-world_rank=*"))
    )


def test_bf16_mixed_ddp_run_prints_what_matters_exports_float32_leaves_no_temp_dirs(
    ray_cluster, train_data, tmp_path
):
    """One cheap 2-worker run (small_cnn, 32 px, 1 epoch) checks the training output, the
    worker's temp dir and a bf16-mixed run's artifact."""
    run_name = f"bf16-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store"
    before = leftover_temp_dirs(run_name)
    cmd = [
        sys.executable, "-m", "train_job", "--data-dir", str(train_data),
        "--model-store", str(store), "--image-size", "32", "--max-samples", "256",
        "--epochs", "1", "--precision", "bf16-mixed", "--storage-path", str(tmp_path / "runs"),
        "--run-name", run_name, *FAST, "--backbone", "small_cnn",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]

    # Readable output: no Lightning sync_dist warning (it came once per logged key, 41 lines),
    # no line dumping the per-attribute metrics (Ray logged every report, ~2,100 characters,
    # on each rank); the progress bar and the final table are still there.
    assert "sync_dist" not in log
    assert "val_auroc/" not in log
    assert "val_auroc=" in log  # progress bar
    table = run.stdout[run.stdout.index("=== Model exported ===") :]
    assert all(f"\n{name} " in table for name in RENDERED)
    assert "test F1    tuned" in table  # tuned vs single threshold, macro over attributes

    assert leftover_temp_dirs(run_name) - before == set()

    # The bf16-mixed run's artifact is float32 and equals the eager float32 model.
    import ray.train

    from train_job.config import TrainConfig
    from train_job.export import load_best_model
    from train_job.train_loop import build_datamodule

    artifact = load_artifact(str(store / "face-attributes" / "latest"))
    assert artifact.metadata.training["precision"] == "bf16-mixed"
    assert list(artifact.metadata.thresholds) == artifact.metadata.labels  # tuned on val
    scripted = torch.jit.load(io.BytesIO(artifact.model_bytes))
    assert {p.dtype for p in scripted.parameters()} == {torch.float32}
    eager = load_best_model(ray.train.Checkpoint(artifact.metadata.training["checkpoint"]))
    cfg = TrainConfig(data_dir=str(train_data), image_size=32, max_samples=256)
    images, _ = next(
        iter(torch.utils.data.DataLoader(build_datamodule(cfg).dataset("test"), batch_size=8))
    )
    with torch.inference_mode():
        probs = scripted(images)
        assert probs.dtype == torch.float32 and probs.shape == (8, 40)
        torch.testing.assert_close(probs, torch.sigmoid(eager(images)), atol=1e-4, rtol=1e-4)


def test_16_mixed_without_gpu_is_refused_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train_job", "--data-dir", str(tmp_path), "--precision", "16-mixed"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "--precision 16-mixed needs --use-gpu (use 32-true or bf16-mixed on CPU)" in result.stderr
    )


def test_bad_data_dir_fails_before_starting_workers(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train_job", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "list_attr_celeba.csv" in result.stderr
