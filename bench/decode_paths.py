"""Accuracy of the two decode paths: AUROC on a CelebA-format split with the ingress's PIL path
(decode_on: ingress) against the model replica's batched torchvision path (decode_on: model),
both through the served artifact and the serving code, on CPU.

    python -m bench.decode_paths --model-uri models/face-attributes/latest \
        --data-dir data/synthetic [--split val] [--precision float32]

Prints and writes bench/results/decode-paths-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchmetrics.classification import MultilabelAUROC

from serve_app.common.decode import decode_image
from serve_app.model.decode_batch import decode_batch
from serve_app.model.inference import forward, load_model
from train_job.data import CelebADataModule

RESULTS = Path(__file__).resolve().parent / "results"
MAX_PIXELS = 40_000_000


def split_files(data_dir: str, split: str) -> tuple[list[bytes], np.ndarray, list[str]]:
    data = CelebADataModule(data_dir, num_workers=0)
    idx = data.splits[split]
    names = [data.table.image_ids[i] for i in idx]
    files = [(data.layout.images_dir / n).read_bytes() for n in names]
    return files, data.table.labels[idx], data.attribute_names


def macro_auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    defined = (labels.sum(0) > 0) & (labels.sum(0) < len(labels))
    auroc = MultilabelAUROC(num_labels=labels.shape[1], average=None)
    per_label = auroc(torch.from_numpy(probs), torch.from_numpy(labels).int())
    return float(per_label[torch.from_numpy(defined)].mean())


def evaluate(model_uri: str, data_dir: str, split: str, precision: str) -> dict:
    model = load_model(model_uri, torch.device("cpu"), precision)
    files, labels, _ = split_files(data_dir, split)
    on_ingress, on_model = [], []
    for start in range(0, len(files), 64):
        chunk = files[start : start + 64]
        pil = torch.from_numpy(np.stack([decode_image(f, model.spec, MAX_PIXELS) for f in chunk]))
        batch, order, rejected = decode_batch(chunk, model.spec, model.device, MAX_PIXELS)
        assert not rejected and order == list(range(len(chunk))), rejected
        on_ingress.append(forward(model, pil).numpy())
        on_model.append(forward(model, batch).numpy())
    p_ingress, p_model = np.concatenate(on_ingress), np.concatenate(on_model)
    return {
        "model_uri": model_uri,
        "split": split,
        "images": len(files),
        "precision": precision,
        "auroc_decode_on_ingress": round(macro_auroc(p_ingress, labels), 5),
        "auroc_decode_on_model": round(macro_auroc(p_model, labels), 5),
        "max_abs_probability_difference": round(float(np.abs(p_ingress - p_model).max()), 5),
        "mean_abs_probability_difference": round(float(np.abs(p_ingress - p_model).mean()), 6),
        "decisions_that_differ": int(
            ((p_ingress >= model.metadata.threshold) != (p_model >= model.metadata.threshold)).sum()
        ),
        "decisions": int(p_ingress.size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default="models/face-attributes/latest")
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()
    result = evaluate(args.model_uri, args.data_dir, args.split, args.precision)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"decode-paths-{args.precision}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
