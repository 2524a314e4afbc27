"""Best checkpoint -> traced TorchScript (artifact format 2), evaluated on val and test,
written to the model store (signed when TrainConfig.signing_key is set).

Each attribute's decision threshold is tuned on the validation split (max F1, exact over the
sorted validation scores; an attribute whose validation split has no positive, no negative, or
an AUROC within chance keeps the single ``--threshold``; train_job/thresholds.py) and stored in metadata ``thresholds``; the test split's
F1 and accuracy with them and with the single threshold go in ``metrics``.

Also a command: ``python -m train_job.export --checkpoint DIR --data-dir DIR ...`` re-exports
a checkpoint without training (see main)."""

from __future__ import annotations

import io
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import lightning
import numpy as np
import ray
import ray.train
import torch
import torchvision
from torch import nn
from torchmetrics.classification import MultilabelAUROC

from model_store import export_torchscript, save_artifact
from train_job.config import TrainConfig, build_parser, config_from_args
from train_job.data import INTERPOLATION, CelebADataModule, data_fingerprint
from train_job.module import FaceAttributeClassifier, LabelBalance
from train_job.thresholds import RULE as THRESHOLD_RULE
from train_job.thresholds import compare_on_split, tune_thresholds
from train_job.train_loop import build_datamodule


def load_best_model(checkpoint: ray.train.Checkpoint) -> FaceAttributeClassifier:
    with checkpoint.as_directory() as ckpt_dir:
        path = os.path.join(ckpt_dir, "checkpoint.ckpt")
        return FaceAttributeClassifier.load_from_checkpoint(path, map_location="cpu").eval()


@dataclass(frozen=True)
class SplitEvaluation:
    """The exported model on one split: AUROC summary plus the raw scores the thresholds are
    tuned and judged on."""

    summary: dict[str, Any]  # auroc (macro), per_label, images
    scores: np.ndarray  # (N, num_labels) float32 probabilities
    targets: np.ndarray  # (N, num_labels) uint8 0/1


def evaluate(
    model: torch.jit.ScriptModule, datamodule: CelebADataModule, split: str, device: torch.device
) -> SplitEvaluation:
    """Macro and per-label AUROC of the exported model (probabilities out) on one split, and
    its scores and targets (N x 40 float32: 3.2 MB for CelebA's 20k-image val split)."""
    labels = datamodule.attribute_names
    auroc = MultilabelAUROC(num_labels=len(labels), average=None).to(device)
    balance = LabelBalance(len(labels)).to(device)
    loader = torch.utils.data.DataLoader(
        datamodule.dataset(split),
        batch_size=datamodule.batch_size,
        num_workers=datamodule.num_workers,
    )
    scores, targets = [], []
    with torch.inference_mode():
        for images, batch_targets in loader:
            probs = model(images.to(device))
            auroc.update(probs, batch_targets.to(device).int())
            balance.update(batch_targets.to(device))
            scores.append(probs.float().cpu().numpy())
            targets.append(batch_targets.cpu().numpy().astype(np.uint8))
    with warnings.catch_warnings():
        # Labels with no positives in the split: LabelBalance leaves them out of the mean.
        warnings.filterwarnings("ignore", "No positive samples", UserWarning)
        per_label = auroc.compute().cpu()
    defined = balance.compute().cpu()
    summary = {
        "auroc": round(float(per_label[defined].mean()), 5) if defined.any() else None,
        "per_label": {n: round(float(v), 5) for n, v, ok in zip(labels, per_label, defined) if ok},
        "images": len(loader.dataset),
    }
    empty = np.zeros((0, len(labels)))
    return SplitEvaluation(
        summary,
        np.concatenate(scores) if scores else empty.astype(np.float32),
        np.concatenate(targets) if targets else empty.astype(np.uint8),
    )


def threshold_metrics(
    val: SplitEvaluation, test: SplitEvaluation, labels: list[str], single: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-label thresholds tuned on ``val`` (train_job/thresholds.py states the rule) and the
    test split's F1 / accuracy with them against ``single`` (metrics entries test_f1_tuned,
    test_f1_single, test_accuracy_tuned, test_accuracy_single and their per-label maps)."""
    tuned = tune_thresholds(val.scores, val.targets, labels, single)
    metrics = compare_on_split(test.scores, test.targets, labels, tuned, single, "test")
    val_macro = compare_on_split(val.scores, val.targets, labels, tuned, single, "val")
    metrics.update({k: v for k, v in val_macro.items() if not k.endswith("_per_label")})
    return tuned, metrics


def export_and_evaluate(
    checkpoint: ray.train.Checkpoint, cfg: TrainConfig, run: dict[str, Any]
) -> dict[str, Any]:
    """Runs as a Ray task (on a GPU when training used one). Returns the artifact's metadata."""
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(cfg.cpus_per_worker)
    model = load_best_model(checkpoint)
    datamodule = build_datamodule(cfg)
    # The artifact returns probabilities: (N, 3, H, W) normalised float -> (N, 40) in [0, 1].
    exported = nn.Sequential(model.net, nn.Sigmoid()).eval()
    example, _ = next(iter(torch.utils.data.DataLoader(datamodule.dataset("val"), batch_size=4)))
    model_bytes = export_torchscript(exported, example)
    scripted = torch.jit.load(io.BytesIO(model_bytes), map_location=device)

    val = evaluate(scripted, datamodule, "val", device)
    test = evaluate(scripted, datamodule, "test", device)
    labels = datamodule.attribute_names
    thresholds, decisions = threshold_metrics(val, test, labels, cfg.threshold)
    metadata = {
        "labels": labels,
        "input_size": [cfg.image_size, cfg.image_size],
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "interpolation": INTERPOLATION,
        "threshold": cfg.threshold,
        "thresholds": thresholds,
        "output_kind": "probabilities",
        "backbone": cfg.backbone,
        "face_template": datamodule.face_template(),
        "metrics": {
            "val_auroc": val.summary["auroc"],
            "test_auroc": test.summary["auroc"],
            "val_auroc_per_label": val.summary["per_label"],
            "test_auroc_per_label": test.summary["per_label"],
            "best_epoch": run.get("best_epoch"),
            **decisions,
        },
        "training": {
            "run_name": cfg.run_name,
            "storage_path": run.get("storage_path"),
            "checkpoint": checkpoint.path,
            "epochs_trained": run.get("epochs_trained"),
            "max_epochs": cfg.epochs,
            "samples": {s: len(i) for s, i in datamodule.splits.items()},
            "data_dir": cfg.data_dir,
            "data_sha256": data_fingerprint(datamodule.layout),
            "num_workers": cfg.num_workers,
            "use_gpu": cfg.use_gpu,
            "pretrained": cfg.pretrained,
            "batch_size_per_worker": cfg.batch_size,
            "lr": cfg.lr,
            "precision": cfg.precision,
            "threshold_rule": THRESHOLD_RULE,
            "duration_s": round(time.time() - run["started_at"], 1),
            "versions": {
                "ray": ray.__version__,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "lightning": lightning.__version__,
                "python": platform.python_version(),
            },
        },
    }
    artifact = save_artifact(
        cfg.model_store, cfg.model_name, model_bytes, metadata, signing_key=cfg.signing_key
    )
    return {"uri": artifact.uri, **artifact.metadata.model_dump(mode="json")}


def print_report(meta: dict) -> None:
    metrics = meta["metrics"]
    tuned = meta.get("thresholds") or {}
    single = meta["threshold"]
    print("\n=== Model exported ===")
    print(f"artifact   {meta['uri']}")
    print(
        f"version    {meta['version']}   backbone {meta['backbone']}   input {meta['input_size']}"
    )
    print(
        f"val AUROC  {metrics['val_auroc']}   test AUROC {metrics['test_auroc']}   best epoch {metrics['best_epoch']}"
    )
    print(
        f"test F1    tuned {_fmt(metrics.get('test_f1_tuned'))}   single {single} "
        f"{_fmt(metrics.get('test_f1_single'))}   (macro; thresholds tuned on val, max F1)"
    )
    print(
        f"test acc   tuned {_fmt(metrics.get('test_accuracy_tuned'))}   single {single} "
        f"{_fmt(metrics.get('test_accuracy_single'))}"
    )
    f1 = metrics.get("test_f1_per_label", {})
    print(
        f"{'attribute':<22}{'val AUROC':>10}{'test AUROC':>12}{'threshold':>11}"
        f"{'F1 tuned':>10}{'F1 single':>11}"
    )
    for name in meta["labels"]:
        val = metrics["val_auroc_per_label"].get(name)
        test = metrics["test_auroc_per_label"].get(name)
        scores = f1.get(name, {})
        print(
            f"{name:<22}{_fmt(val):>10}{_fmt(test):>12}{_fmt(tuned.get(name)):>11}"
            f"{_fmt(scores.get('tuned')):>10}{_fmt(scores.get('single')):>11}"
        )
    if meta.get("signature"):
        print(f"signed by  ed25519 key {meta['signature']['public_key_sha256'][:16]}")
    print(f"\nserve it:  serve run config.yaml   (model_uri {meta['uri']})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    """python -m train_job.export --checkpoint DIR --data-dir DIR [training flags]: export a
    Ray Train checkpoint again (e.g. an artifact of an older format_version), in this process.

    The backbone comes from the checkpoint; --image-size, --max-samples and --seed must be the
    training run's, since they define the evaluation splits and the input size.
    """
    parser = build_parser()
    parser.prog = "python -m train_job.export"
    parser.description = "Export a Ray Train checkpoint (checkpoint.ckpt) to the model store."
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint directory holding checkpoint.ckpt"
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.checkpoint, "checkpoint.ckpt")):
        parser.error(f"--checkpoint {args.checkpoint}: no checkpoint.ckpt in it")
    cfg = config_from_args(parser, args)
    checkpoint = ray.train.Checkpoint(os.path.abspath(args.checkpoint))
    cfg.backbone = load_best_model(checkpoint).hparams.backbone
    run = {"started_at": time.time(), "storage_path": None, "best_epoch": None}
    print_report(export_and_evaluate(checkpoint, cfg, run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
