"""One model trained on the session's generated faces, exported as training exports it, shared by
the tests that need a model that learned something (explanations, faces, the batch job).

resnet18 at 64x64 (the demo's backbone and size), 3 epochs on the 1,600 training faces, in this
process with the project's LightningModule and data module (no Ray: ~40 s on 2 cores; the Ray
Train path has its own tests in tests/test_training.py). The artifact gets what training's
export writes that these tests read: the face template of the data, and the validation and test
AUROC computed by train_job.export.evaluate (the same code as a real run's report).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

NAME = "face-attributes"


def train_and_export(data_dir: Path, store: Path, epochs: int = 3) -> str:
    """Returns the trained artifact's uri; also writes a re-initialised one (``random``)."""
    import lightning.pytorch as pl

    from model_store import export_torchscript, save_artifact
    from train_job.data import INTERPOLATION, CelebADataModule
    from train_job.export import evaluate
    from train_job.module import FaceAttributeClassifier

    torch.manual_seed(0)
    data = CelebADataModule(str(data_dir), image_size=64, batch_size=32, num_workers=0, seed=0)
    model = FaceAttributeClassifier(data.attribute_names, backbone="resnet18", lr=2e-3)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=data.train_dataloader())
    metadata = {
        "labels": list(data.attribute_names), "input_size": [64, 64], "mean": list(data.mean),
        "std": list(data.std), "interpolation": INTERPOLATION, "output_kind": "probabilities",
        "backbone": "resnet18", "face_template": data.face_template(),
    }  # fmt: skip

    def export(net: torch.nn.Module, version: str, name: str = NAME) -> str:
        exported = torch.nn.Sequential(net, torch.nn.Sigmoid()).eval()
        model_bytes = export_torchscript(exported, torch.randn(2, 3, 64, 64))
        scripted = torch.jit.load(io.BytesIO(model_bytes))
        val = evaluate(scripted, data, "val", torch.device("cpu"))
        test = evaluate(scripted, data, "test", torch.device("cpu"))
        metrics = {
            "val_auroc": val.summary["auroc"],
            "test_auroc": test.summary["auroc"],
            "val_auroc_per_label": val.summary["per_label"],
            "test_auroc_per_label": test.summary["per_label"],
        }
        meta = {**metadata, "metrics": metrics}
        return save_artifact(str(store), name, model_bytes, meta, version=version).uri

    trained = export(model.net.eval(), "trained")
    torch.manual_seed(1)  # the same architecture, re-initialised
    export(FaceAttributeClassifier(data.attribute_names, backbone="resnet18").net, "r1", "random")
    return trained
