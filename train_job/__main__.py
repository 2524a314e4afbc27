"""python -m train_job --data-dir DIR [...]: train on Ray, export, print the report."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from train_job.config import TrainConfig, build_parser, config_from_args
from train_job.data import CelebADataModule, DataError
from train_job.export import export_and_evaluate, print_report
from train_job.train_loop import MONITOR, train_loop_per_worker


def run_training(cfg: TrainConfig) -> ray.train.Result:
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            placement_strategy=cfg.placement_strategy,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            # Re-running with the same name (or a lost worker) resumes from the last checkpoint.
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=MONITOR, checkpoint_score_order="max"
            ),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def start_rollout(model_uri: str, extra_args: str) -> int:
    """The serving side's rollout command as a process (training imports no serving code);
    its exit status: 0 promoted, 1 rolled back, 2 refused (the AUROC gate, say)."""
    cmd = [sys.executable, "-m", "serve_app.rollout", "--to", model_uri, *shlex.split(extra_args)]
    print(f"rollout: {shlex.join(cmd)}", flush=True)
    code = subprocess.call(cmd)
    if code:
        print(f"the rollout did not promote {model_uri} (exit status {code}; why: above)")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(parser, args)
    started = time.time()
    try:
        CelebADataModule(cfg.data_dir, cfg.image_size, cfg.batch_size, cfg.max_samples, 0, cfg.seed)
    except DataError as e:  # fail before any worker starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    ray.init()
    print(
        f"Run {cfg.run_name!r}: {cfg.num_workers} workers, {'GPU' if cfg.use_gpu else 'CPU'}, "
        f"{cfg.backbone} @ {cfg.image_size}px, up to {cfg.epochs} epochs. "
        f"Resume it by re-running with --run-name {cfg.run_name}"
    )
    result = run_training(cfg)
    best = result.get_best_checkpoint(MONITOR, "max") or result.checkpoint
    if best is None:
        print("error: training reported no checkpoint", file=sys.stderr)
        return 1
    best_metrics = next((m for c, m in (result.best_checkpoints or []) if c.path == best.path), {})
    run = {
        "started_at": started,
        "storage_path": result.path,
        "best_epoch": best_metrics.get("epoch"),
        "epochs_trained": (result.metrics or {}).get("epoch", -1) + 1,
    }
    export = ray.remote(export_and_evaluate).options(
        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0
    )
    meta = ray.get(export.remote(best, cfg, run))
    print_report(meta)
    print(f"total time {time.time() - started:.0f} s")
    return start_rollout(meta["uri"], args.rollout_args) if args.rollout else 0


if __name__ == "__main__":
    sys.exit(main())
