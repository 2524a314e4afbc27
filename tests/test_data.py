"""CelebA-format loading: layouts, label mapping, splits and clear errors; the generator."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from train_job.backbones import BACKBONES, PretrainedWeightsUnavailable, build_backbone
from train_job.celeba import ATTRIBUTES
from train_job.config import TrainConfig, build_parser
from train_job.data import CelebADataModule, CelebALayout, DataError, read_attributes, split_indices
from train_job.synthetic import RENDERED, generate


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("kaggle"), 60, seed=1)


def test_generator_cli_writes_celeba_layout(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "train_job.synthetic", "--out", str(tmp_path), "--num-images", "20", "--seed", "5"],
        check=True, capture_output=True,
    )  # fmt: skip
    header = (tmp_path / "list_attr_celeba.csv").read_text().splitlines()[0].split(",")
    assert header == ["image_id", *ATTRIBUTES]
    from PIL import Image

    with Image.open(tmp_path / "img_align_celeba" / "000001.jpg") as img:
        assert img.size == (178, 218) and img.format == "JPEG"
    assert (tmp_path / "list_eval_partition.csv").read_text().startswith("image_id,partition")
    assert len(RENDERED) >= 12


def test_generator_is_reproducible(tmp_path):
    a = generate(tmp_path / "a", 15, seed=7)
    b = generate(tmp_path / "b", 15, seed=7)
    assert (a / "list_attr_celeba.csv").read_bytes() == (b / "list_attr_celeba.csv").read_bytes()
    assert (a / "img_align_celeba/000009.jpg").read_bytes() == (
        b / "img_align_celeba/000009.jpg"
    ).read_bytes()


def test_minus_one_one_labels_map_to_zero_one(kaggle):
    table = read_attributes(kaggle / "list_attr_celeba.csv")
    raw = np.array(
        [
            line.split(",")[1:]
            for line in (kaggle / "list_attr_celeba.csv").read_text().splitlines()[1:]
        ],
        dtype=int,
    )
    assert set(np.unique(raw)) <= {-1, 1}
    assert np.array_equal(table.labels, (raw == 1).astype(np.uint8))
    assert table.attribute_names == list(ATTRIBUTES)


def test_official_partition_is_used(kaggle):
    dm = CelebADataModule(str(kaggle), image_size=32, batch_size=4, num_workers=0)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 48, "val": 6, "test": 6}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 40)


def test_original_text_layout_and_kaggle_nesting(tmp_path):
    original = generate(tmp_path / "orig", 30, seed=2, layout="original")
    lines = (original / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "30" and lines[1].split() == list(ATTRIBUTES)
    dm = CelebADataModule(str(original), image_size=32, num_workers=0)
    assert sum(len(v) for v in dm.splits.values()) == 30

    nested = tmp_path / "nested"
    shutil.copytree(original, nested / "x")
    (nested / "img_align_celeba").mkdir(parents=True)
    shutil.move(
        str(nested / "x" / "img_align_celeba"),
        str(nested / "img_align_celeba" / "img_align_celeba"),
    )
    for f in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        shutil.move(str(nested / "x" / f), str(nested / f))
    layout = CelebALayout.discover(nested)
    assert layout.images_dir == nested / "img_align_celeba" / "img_align_celeba"


def test_seeded_split_without_partition_file_is_disjoint(kaggle, tmp_path):
    table = read_attributes(kaggle / "list_attr_celeba.csv")
    a = split_indices(table, None, seed=0, max_samples=None)
    b = split_indices(table, None, seed=0, max_samples=None)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    sets = [set(a[k].tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 60
    capped = split_indices(table, None, seed=0, max_samples=16)
    assert (len(capped["train"]), len(capped["val"]), len(capped["test"])) == (16, 2, 2)


def test_malformed_csv_names_file_and_line(kaggle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(kaggle, bad)
    path = bad / "list_attr_celeba.csv"
    lines = path.read_text().splitlines()
    lines[5] = ",".join(lines[5].split(",")[:-3])  # a short row
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.csv line 6: expected 41 fields, got 38"):
        read_attributes(path)
    lines[5] = lines[6].replace("-1", "2", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 6: labels must be -1 or 1"):
        read_attributes(path)


def test_missing_image_names_the_file(kaggle, tmp_path):
    bad = tmp_path / "missing"
    shutil.copytree(kaggle, bad)
    (bad / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(DataError, match="000007.jpg"):
        CelebADataModule(str(bad), image_size=32, num_workers=0)


def test_missing_attribute_file(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(DataError, match="list_attr_celeba.csv"):
        CelebALayout.discover(tmp_path)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_40_logits(name):
    net = build_backbone(name, 40).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 40)


def test_pretrained_unavailable_is_clear():
    with pytest.raises(PretrainedWeightsUnavailable, match="--pretrained"):
        build_backbone("small_cnn", 40, pretrained=True)


def test_cli_validation_errors(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["--data-dir", str(tmp_path), "--epochs", "0", "--image-size", "8"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}  # not the command's own flags
    with pytest.raises(ValueError, match="--epochs.*\n.*|--image-size"):
        TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    with pytest.raises(ValueError, match="16-mixed needs --use-gpu"):
        TrainConfig(data_dir=str(tmp_path), precision="16-mixed")
    cfg = TrainConfig(data_dir="rel/data", model_store="s3://bucket/models")
    assert cfg.data_dir.startswith("/") and cfg.model_store == "s3://bucket/models"
    assert cfg.run_name.startswith("face-attributes-resnet34-")
