"""What each Ray Train worker runs: Lightning with Ray's DDP strategy and environment.

Ray keeps the checkpoints (RayTrainReportCallback reports one per epoch; CheckpointConfig keeps
the best two by val_auroc in storage_path), so Lightning writes none of its own, and the
callback's local staging directory is removed when fit ends: a run leaves nothing in the
worker's temp dir."""

from __future__ import annotations

import logging
import os
import shutil

import lightning.pytorch as pl
import ray.train
import torch
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from ray.train.lightning import (
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    prepare_trainer,
)

from train_job.config import TrainConfig
from train_job.data import CelebADataModule
from train_job.module import FaceAttributeClassifier

MONITOR = "val_auroc"


def build_datamodule(cfg: TrainConfig) -> CelebADataModule:
    return CelebADataModule(
        cfg.data_dir,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        max_samples=cfg.max_samples,
        num_workers=cfg.dataloader_workers,
        seed=cfg.seed,
    )


def quiet_ray_report_log() -> None:
    """Ray Train logs every report at INFO with all of its metrics (45 of them: ~2,100
    characters on each rank, every epoch); the progress bar already shows the few that matter
    and the checkpoints keep them all. Its logger is named after the module's file path, not
    under ray.train, so it is reached through the module."""
    from ray.train.v2._internal.execution import context

    context.logger.setLevel(logging.WARNING)


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config)
    if not cfg.use_gpu:
        # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker was given.
        torch.set_num_threads(cfg.cpus_per_worker)
    quiet_ray_report_log()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = FaceAttributeClassifier(
        datamodule.attribute_names, cfg.backbone, cfg.pretrained, cfg.lr, cfg.weight_decay
    )
    # Ray keeps the reported checkpoints (CheckpointConfig, scored on val_auroc) in
    # storage_path; they survive worker loss and are what a re-run resumes from.
    report = RayTrainReportCallback()
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if cfg.use_gpu else "cpu",
        devices="auto",
        # gloo on CPU, nccl on GPU: Lightning's DDP default for the device in use.
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        precision=cfg.precision,
        callbacks=[
            report,
            EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience),
            TQDMProgressBar(refresh_rate=10),
        ],
        logger=False,
        # No ModelCheckpoint (Lightning's default one would write under the working dir).
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=ray.train.get_context().get_world_rank() == 0,
    )
    trainer = prepare_trainer(trainer)

    try:
        fit(trainer, model, datamodule, cfg.run_name)
    finally:
        # The callback stages each epoch's checkpoint under this prefix and removes only the
        # epoch's subdirectory after the upload.
        shutil.rmtree(report.tmpdir_prefix, ignore_errors=True)


def fit(
    trainer: pl.Trainer,
    model: FaceAttributeClassifier,
    datamodule: CelebADataModule,
    run_name: str,
) -> None:
    """From scratch, or from the checkpoint Ray Train hands a re-run or a restarted worker."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        print(f"Starting {run_name} from scratch (no checkpoint to resume from)")
        trainer.fit(model, datamodule=datamodule)
        return
    with checkpoint.as_directory() as ckpt_dir:
        ckpt_path = os.path.join(ckpt_dir, RayTrainReportCallback.CHECKPOINT_NAME)
        epoch = torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]
        print(f"Resuming {run_name} from its checkpoint after epoch {epoch}")
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
