"""CelebA-format data: the attribute table, the split, the Dataset and the LightningDataModule.

Accepts Kaggle's CSV layout (list_attr_celeba.csv, list_eval_partition.csv,
img_align_celeba/img_align_celeba/) and the original release's text layout
(list_attr_celeba.txt, list_eval_partition.txt, flat img_align_celeba/).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from model_store import CELEBA_TEMPLATE, FaceTemplate
from train_job.celeba import (
    ATTR_CSV,
    ATTR_TXT,
    IMAGES_DIR,
    LANDMARKS_CSV,
    LANDMARKS_TXT,
    PARTITION_CSV,
    PARTITION_TXT,
)

# ImageNet statistics: right for torchvision's pretrained backbones and fine from scratch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = "bilinear"  # recorded in the artifact; serving resizes with the same filter


class DataError(ValueError):
    """A data set that cannot be read; the message names the file and row."""


@dataclass(frozen=True)
class AttributeTable:
    image_ids: list[str]
    attribute_names: list[str]
    labels: np.ndarray  # (N, num_attributes) uint8 in {0, 1}


@dataclass(frozen=True)
class CelebALayout:
    root: Path
    attributes_file: Path
    partition_file: Path | None
    images_dir: Path
    landmarks_file: Path | None = None  # list_landmarks_align_celeba: the crops' geometry

    @classmethod
    def discover(cls, data_dir: str | os.PathLike) -> CelebALayout:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"--data-dir {root} is not a directory")
        attributes = _first_existing(root / ATTR_CSV, root / ATTR_TXT)
        if attributes is None:
            raise DataError(
                f"{root} has neither {ATTR_CSV} (Kaggle) nor {ATTR_TXT} (original release)"
            )
        images = root / IMAGES_DIR
        if (images / IMAGES_DIR).is_dir():  # Kaggle nests the folder in itself
            images = images / IMAGES_DIR
        if not images.is_dir():
            raise DataError(f"{root} has no {IMAGES_DIR}/ folder of images")
        partition = _first_existing(root / PARTITION_CSV, root / PARTITION_TXT)
        landmarks = _first_existing(root / LANDMARKS_CSV, root / LANDMARKS_TXT)
        return cls(root, attributes, partition, images, landmarks)


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def read_attributes(path: Path) -> AttributeTable:
    """-1/1 (0 tolerated as negative) -> 0/1. Errors name the file and the 1-based line."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header, body, first_line = rows[0] if rows else [], rows[1:], 2
        names = header[1:]
    else:
        with open(path) as f:
            lines = f.read().splitlines()
        if len(lines) < 2:
            raise DataError(f"{path}: expected a count line and a names line")
        names, first_line = lines[1].split(), 3
        body = [line.split() for line in lines[2:] if line.strip()]
        if lines[0].strip().isdigit() and int(lines[0]) != len(body):
            raise DataError(
                f"{path} line 1 says {lines[0].strip()} images, the file lists {len(body)}"
            )
    if not names:
        raise DataError(f"{path}: no attribute names in the header")
    ids: list[str] = []
    labels = np.zeros((len(body), len(names)), dtype=np.uint8)
    for i, row in enumerate(body):
        line = first_line + i
        if len(row) != len(names) + 1:
            raise DataError(f"{path} line {line}: expected {len(names) + 1} fields, got {len(row)}")
        try:
            values = [int(v) for v in row[1:]]
        except ValueError as e:
            raise DataError(f"{path} line {line}: labels must be -1 or 1 ({e})") from e
        if any(v not in (-1, 0, 1) for v in values):
            raise DataError(f"{path} line {line}: labels must be -1 or 1, got {row[1:]}")
        ids.append(row[0])
        labels[i] = [1 if v == 1 else 0 for v in values]
    return AttributeTable(ids, names, labels)


def face_template(layout: CelebALayout, image_ids: list[str] | None = None) -> dict:
    """The aligned crop the images share, for the artifact's ``face_template``: the mean of
    each landmark over ``image_ids`` (all when None) from list_landmarks_align_celeba, in the
    images' pixels; without that file, CelebA's (model_store.CELEBA_TEMPLATE)."""
    if layout.landmarks_file is None:
        return CELEBA_TEMPLATE.model_dump(mode="json")
    table = read_landmarks(layout.landmarks_file)
    wanted = set(image_ids) if image_ids is not None else None
    rows = [v for k, v in table.items() if wanted is None or k in wanted]
    if not rows:
        raise DataError(f"{layout.landmarks_file} lists none of the training images")
    mean = np.asarray(rows, dtype=np.float64).mean(0).reshape(5, 2)
    with Image.open(layout.images_dir / next(iter(wanted or table))) as first:
        width, height = first.size
    return FaceTemplate(
        size=(height, width),
        landmarks=tuple((round(float(x), 2), round(float(y), 2)) for x, y in mean),
        source=f"mean of {layout.landmarks_file.name} over {len(rows)} training images",
    ).model_dump(mode="json")


def read_landmarks(path: Path) -> dict[str, list[float]]:
    """list_landmarks_align_celeba (Kaggle's .csv or the release's .txt) -> {image: 10 values}."""
    with open(path) as f:
        lines = f.read().splitlines()
    if path.suffix == ".csv":
        body, first_line = lines[1:], 2
    else:  # a count line, a names line
        body, first_line = lines[2:], 3
    out: dict[str, list[float]] = {}
    for i, line in enumerate(body):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 11:
                raise ValueError(f"{len(fields)} fields")
            out[fields[0]] = [float(v) for v in fields[1:]]
        except ValueError as e:
            raise DataError(
                f"{path} line {first_line + i}: expected an image and 10 coordinates ({e})"
            ) from e
    return out


def read_partition(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.replace(",", " ").split()
            if not fields or (line_no == 1 and fields[0] == "image_id"):
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DataError(
                    f"{path} line {line_no}: expected '<image> <0|1|2>', got {line.strip()!r}"
                )
            out[fields[0]] = int(fields[1])
    return out


def split_indices(
    table: AttributeTable, partition: dict[str, int] | None, seed: int, max_samples: int | None
) -> dict[str, np.ndarray]:
    """Official partition when given, else a seeded 80/10/10 split; train, val, test disjoint.
    ``max_samples`` caps train at N and val/test at ceil(N/8), sampled with the seed."""
    n = len(table.image_ids)
    rng = np.random.default_rng(seed)
    if partition is not None:
        missing = [i for i in table.image_ids if i not in partition]
        if missing:
            raise DataError(f"{len(missing)} images have no partition entry, e.g. {missing[0]}")
        part = np.array([partition[i] for i in table.image_ids])
        splits = {
            name: np.flatnonzero(part == k) for k, name in enumerate(("train", "val", "test"))
        }
    else:
        order = rng.permutation(n)
        n_train, n_val = int(n * 0.8), int(n * 0.1)
        splits = {
            "train": np.sort(order[:n_train]),
            "val": np.sort(order[n_train : n_train + n_val]),
            "test": np.sort(order[n_train + n_val :]),
        }
    if max_samples:
        caps = {
            "train": max_samples,
            "val": math.ceil(max_samples / 8),
            "test": math.ceil(max_samples / 8),
        }
        splits = {
            k: np.sort(rng.choice(v, caps[k], replace=False)) if len(v) > caps[k] else v
            for k, v in splits.items()
        }
    for name, idx in splits.items():
        if len(idx) == 0:
            raise DataError(f"the {name} split is empty: the data set has {n} images")
    return splits


def data_fingerprint(layout: CelebALayout) -> str:
    """sha256 of the label and partition files: identifies the data a model was trained on."""
    h = hashlib.sha256()
    for path in (layout.attributes_file, layout.partition_file):
        if path is not None:
            h.update(path.read_bytes())
    return h.hexdigest()


def eval_transform(image_size: tuple[int, int], mean, std) -> v2.Compose:
    """Exactly what serving reproduces: PIL bilinear resize to (H, W), scale, normalise."""
    return v2.Compose(
        [
            v2.Resize(image_size, interpolation=InterpolationMode(INTERPOLATION)),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def train_transform(image_size: tuple[int, int], mean, std) -> v2.Compose:
    # No hue jitter: hair colour is a label. Horizontal flips keep every attribute.
    return v2.Compose(
        [
            v2.Resize(image_size, interpolation=InterpolationMode(INTERPOLATION)),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=8, translate=(0.04, 0.04), scale=(0.95, 1.05)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class CelebADataset(Dataset):
    def __init__(self, images_dir: Path, image_ids: list[str], labels: np.ndarray, transform):
        self.images_dir = images_dir
        self.image_ids = image_ids
        self.labels = torch.from_numpy(labels.astype(np.float32))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.images_dir / self.image_ids[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except FileNotFoundError as e:
            raise DataError(
                f"image {self.image_ids[i]} listed in the attribute file is missing from {self.images_dir}"
            ) from e
        return self.transform(image), self.labels[i]


class CelebADataModule(pl.LightningDataModule):
    def __init__(
        self,
        data_dir: str,
        image_size: int = 224,
        batch_size: int = 64,
        max_samples: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        self.layout = CelebALayout.discover(data_dir)
        self.image_size = (image_size, image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.table = read_attributes(self.layout.attributes_file)
        partition = (
            read_partition(self.layout.partition_file) if self.layout.partition_file else None
        )
        self.splits = split_indices(self.table, partition, seed, max_samples)
        self._check_images_exist()

    @property
    def attribute_names(self) -> list[str]:
        return self.table.attribute_names

    def face_template(self) -> dict:
        """The artifact's face_template: the training images' mean landmarks (face_template)."""
        ids = [self.table.image_ids[i] for i in self.splits["train"]]
        return face_template(self.layout, ids)

    def _check_images_exist(self) -> None:
        for idx in self.splits.values():
            for i in idx:
                name = self.table.image_ids[i]
                if not (self.layout.images_dir / name).is_file():
                    raise DataError(
                        f"image {name} (row {i + 1} of {self.layout.attributes_file.name}) "
                        f"is missing from {self.layout.images_dir}"
                    )

    def dataset(self, split: str, train_augment: bool | None = None) -> CelebADataset:
        augment = split == "train" if train_augment is None else train_augment
        make = train_transform if augment else eval_transform
        idx = self.splits[split]
        return CelebADataset(
            self.layout.images_dir,
            [self.table.image_ids[i] for i in idx],
            self.table.labels[idx],
            make(self.image_size, self.mean, self.std),
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
