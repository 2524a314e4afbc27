"""The training command line and its typed, validated configuration."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from dataclasses import asdict, dataclass

from train_job.backbones import BACKBONES


@dataclass
class TrainConfig:
    data_dir: str
    model_store: str = "models"
    model_name: str = "face-attributes"
    backbone: str = "resnet34"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 64
    max_samples: int | None = None
    num_workers: int = 2
    use_gpu: bool = False
    pretrained: bool = False
    storage_path: str | None = None
    run_name: str | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    threshold: float = 0.5
    cpus_per_worker: int = 1
    dataloader_workers: int = 2
    precision: str = "32-true"
    max_failures: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(
                f"--backbone {self.backbone!r}: choose one of {', '.join(sorted(BACKBONES))}"
            )
        if not 32 <= self.image_size <= 1024:
            problems.append(
                f"--image-size {self.image_size}: use 32..1024 (224 for pretrained backbones)"
            )
        for name in ("epochs", "batch_size", "num_workers", "cpus_per_worker"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_samples is not None and self.max_samples < 8:
            problems.append("--max-samples must be >= 8")
        if not 0 < self.threshold < 1:
            problems.append("--threshold must be in (0, 1)")
        if self.precision not in ("32-true", "16-mixed", "bf16-mixed"):
            problems.append("--precision: 32-true, 16-mixed (GPU) or bf16-mixed")
        if self.precision == "16-mixed" and not self.use_gpu:
            problems.append(
                "--precision 16-mixed needs --use-gpu (use 32-true or bf16-mixed on CPU)"
            )
        if problems:
            raise ValueError("invalid training configuration:\n  " + "\n  ".join(problems))
        if self.run_name is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            self.run_name = f"{self.model_name}-{self.backbone}-{stamp}"
        # A Ray job runs in a copy of the working dir: anchor local paths where the command ran.
        self.data_dir = _absolute_if_local(self.data_dir)
        self.model_store = _absolute_if_local(self.model_store)
        if self.storage_path is not None:
            self.storage_path = _absolute_if_local(self.storage_path)

    def to_dict(self) -> dict:
        return asdict(self)


def _absolute_if_local(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train_job",
        description="Train a CelebA face-attribute classifier with Ray Train + Lightning and "
        "export it (TorchScript + metadata.json) to a versioned model store.",
    )
    p.add_argument(
        "--data-dir", required=True, help="CelebA folder (Kaggle CSV or original TXT layout)"
    )
    p.add_argument("--model-store", default="models", help="store root: a path or s3://, gs:// URI")
    p.add_argument("--model-name", default="face-attributes")
    p.add_argument("--backbone", default="resnet34", choices=sorted(BACKBONES))
    p.add_argument("--image-size", type=int, default=224, help="square input side in pixels")
    p.add_argument(
        "--epochs", type=int, default=10, help="maximum epochs (early stopping may end sooner)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--max-samples", type=int, default=None, help="train on N images (val/test N/8)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP processes)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument(
        "--pretrained", action="store_true", help="start from torchvision ImageNet weights"
    )
    p.add_argument(
        "--storage-path", default=None, help="Ray Train checkpoints (default ~/ray_results)"
    )
    p.add_argument(
        "--run-name", default=None, help="re-use a name to resume that run from its last checkpoint"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="decision threshold stored in the artifact"
    )
    p.add_argument("--cpus-per-worker", type=int, default=1, help="also the worker's torch threads")
    p.add_argument(
        "--dataloader-workers", type=int, default=2, help="DataLoader processes per worker"
    )
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed (GPU) or bf16-mixed")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
