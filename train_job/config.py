"""The training command line and its typed, validated configuration."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
from dataclasses import asdict, dataclass

from train_job.backbones import BACKBONES

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")


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
    # How the workers' bundles meet nodes (Ray placement group strategies). PACK (Ray Train's
    # default) fills one node first; SPREAD prefers other nodes; STRICT_SPREAD requires one node
    # per worker, and the autoscaler adds nodes to satisfy it (tests/cluster: 2 workers on 2
    # cpu-workers nodes, and a lost node's worker restarted on a replacement).
    placement_strategy: str = "PACK"
    seed: int = 0
    # Path of an ed25519 PEM private key (python -m model_store.keys generate): the exported
    # artifact is signed with it. Read where the export task runs (the driver's node locally).
    signing_key: str | None = None

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
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            problems.append(
                f"--placement-strategy {self.placement_strategy!r}: "
                f"choose one of {', '.join(PLACEMENT_STRATEGIES)}"
            )
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
        if self.signing_key is not None:
            self.signing_key = _absolute_if_local(self.signing_key)

    def to_dict(self) -> dict:
        return asdict(self)


def _signing_key_problems(path: str) -> list[str]:
    """Checked by the CLI before training starts, not hours later at export (not in
    __post_init__: workers rebuild the config on nodes that need not hold the key)."""
    from model_store.signing import KeyFileError, load_private_key

    try:
        load_private_key(path)
    except KeyFileError as e:
        return [f"--signing-key {path}: {e} (make one: python -m model_store.keys generate)"]
    return []


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
    p.add_argument(
        "--placement-strategy",
        default="PACK",
        choices=PLACEMENT_STRATEGIES,
        help="workers on nodes: PACK fills a node first, STRICT_SPREAD one node per worker",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--signing-key",
        default=None,
        help="ed25519 PEM private key: sign the artifact (python -m model_store.keys generate)",
    )
    p.add_argument(
        "--rollout",
        action="store_true",
        help="after export, roll the new version out to the running service: python -m "
        "serve_app.rollout --to <artifact> (it refuses when the validation AUROC is below the "
        "serving version's by more than --max-auroc-drop); exit status: the rollout's",
    )
    p.add_argument(
        "--rollout-args",
        default="",
        help='more options for the rollout, one string (e.g. "--url http://head:8000 '
        '--dashboard http://head:8265 --max-auroc-drop 0.005"; see python -m serve_app.rollout '
        "--help)",
    )
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(argv))


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig in ``args`` (other attributes, e.g. a command's own flags, ignored);
    errors exit through ``parser`` as usage errors."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
    if cfg.signing_key is not None and (problems := _signing_key_problems(cfg.signing_key)):
        parser.error("invalid training configuration:\n  " + "\n  ".join(problems))
    return cfg
