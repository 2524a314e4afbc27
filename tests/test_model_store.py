"""The artifact contract: versioned store, latest pointer, checksums, metadata, URIs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from model_store import (
    ArtifactError,
    ArtifactMetadata,
    export_torchscript,
    list_versions,
    load_artifact,
    load_torchscript,
    resize_for_model,
    save_artifact,
)
from model_store.store import resolve_model_uri
from tests.artifacts import CELEBA_LABELS, TinyNet, tuned_thresholds, write_tiny_artifact
from train_job.synthetic import draw_attributes, render_face


def test_save_then_load_by_latest_version_and_model_dir(tmp_path):
    first = write_tiny_artifact(str(tmp_path), version="a")
    second = write_tiny_artifact(str(tmp_path), version="b")
    assert (tmp_path / "face-attributes" / "latest").read_text().strip() == "b"
    assert load_artifact(str(tmp_path / "face-attributes" / "latest")).metadata.version == "b"
    assert load_artifact(str(tmp_path / "face-attributes")).metadata.version == "b"
    assert load_artifact(first.uri).metadata.version == "a"
    assert load_artifact(second.uri).model_bytes == second.model_bytes


def test_versions_never_overwrite(tmp_path):
    write_tiny_artifact(str(tmp_path), version="same")
    again = write_tiny_artifact(str(tmp_path), version="same")
    assert again.metadata.version == "same-2"


def test_metadata_is_self_describing(tmp_path):
    art = write_tiny_artifact(str(tmp_path))
    meta = json.loads(
        (tmp_path / "face-attributes" / art.metadata.version / "metadata.json").read_text()
    )
    for key in (
        "labels",
        "input_size",
        "mean",
        "std",
        "threshold",
        "output_kind",
        "version",
        "sha256",
        "metrics",
    ):
        assert key in meta, key
    assert len(meta["labels"]) == 40


def test_tuned_thresholds_round_trip_and_old_artifacts_load_without_them(tmp_path):
    tuned = write_tiny_artifact(str(tmp_path), version="tuned", thresholds=tuned_thresholds())
    meta = load_artifact(tuned.uri).metadata
    assert meta.thresholds == tuned_thresholds()
    assert meta.label_thresholds() == [tuned_thresholds()[label] for label in CELEBA_LABELS]
    old = load_artifact(write_tiny_artifact(str(tmp_path), version="old").uri).metadata
    assert old.thresholds is None  # an artifact written before tuning existed
    assert old.label_thresholds() == [old.threshold] * len(CELEBA_LABELS)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.pop("Smiling"),
        lambda t: t.update(Not_A_Label=0.5),
        lambda t: t.update(Smiling=1.0),
        lambda t: t.update(Smiling=0.0),
    ],
    ids=["label missing", "unknown label", "one", "zero"],
)
def test_thresholds_must_name_every_label_once_within_0_and_1(tmp_path, edit):
    meta = write_tiny_artifact(str(tmp_path), version="v").metadata.model_dump()
    thresholds = tuned_thresholds()
    edit(thresholds)
    with pytest.raises(ValueError, match="thresholds"):
        ArtifactMetadata(**{**meta, "thresholds": thresholds})


def test_fsspec_uri_store(tmp_path):
    uri = "memory://store-test"
    art = write_tiny_artifact(uri, version="m1")
    loaded = load_artifact(f"{uri}/face-attributes/latest")
    assert loaded.metadata.version == "m1" and loaded.model_bytes == art.model_bytes


def test_sha256_mismatch_refused(tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="x")
    model = tmp_path / "face-attributes" / "x" / "model.pt"
    model.write_bytes(model.read_bytes()[:-10])  # truncated
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(art.uri)


@pytest.mark.parametrize("field", ["labels", "input_size", "sha256", "output_kind"])
def test_metadata_missing_field_refused(tmp_path, field):
    art = write_tiny_artifact(str(tmp_path), version="x")
    path = tmp_path / "face-attributes" / "x" / "metadata.json"
    meta = json.loads(path.read_text())
    del meta[field]
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=field):
        load_artifact(art.uri)


def test_missing_artifact_says_how_to_fix(tmp_path):
    with pytest.raises(ArtifactError, match="train a model first|no model artifact"):
        resolve_model_uri(str(tmp_path / "face-attributes" / "latest"))
    with pytest.raises(ArtifactError, match="no model artifact"):
        load_artifact(str(tmp_path / "nothing-here"))


def test_export_matches_eager_and_refuses_drift():
    model = TinyNet()
    example = torch.randn(3, 3, 32, 32)
    data = export_torchscript(model, example)
    import io

    reloaded = torch.jit.load(io.BytesIO(data))
    torch.testing.assert_close(reloaded(example), model(example))
    assert len(list(reloaded.parameters())) == 2  # not frozen: weights stay parameters

    class Stochastic(torch.nn.Module):  # traced output cannot match eager: export must refuse
        def forward(self, x):
            return x + torch.rand_like(x)

    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_torchscript(Stochastic(), example)


def test_models_list_cli(tmp_path):
    """An artifact from before threshold tuning shows "-" in the F1/accuracy columns."""
    write_tiny_artifact(str(tmp_path), version="20260101-000000")
    decisions = {
        "test_f1_tuned": 0.61234, "test_f1_single": 0.52345,
        "test_accuracy_tuned": 0.90001, "test_accuracy_single": 0.91002,
    }  # fmt: skip
    write_tiny_artifact(
        str(tmp_path), version="20260102-000000", thresholds=tuned_thresholds(), metrics=decisions
    )
    rows = list_versions(str(tmp_path))
    assert [r["version"] for r in rows] == ["20260102-000000", "20260101-000000"]
    out = subprocess.run(
        [sys.executable, "-m", "train_job.models", "list", "--model-store", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "NAME" in out and "20260102-000000 (latest)" in out and "tiny-test-net" in out
    assert "TEST F1 tuned/single" in out and "TEST ACC tuned/single" in out
    tuned_row, old_row = out.splitlines()[1:3]
    assert "0.6123/0.5234" in tuned_row and "0.9000/0.9100" in tuned_row
    assert "0.6123" not in old_row and " - " in old_row


# --- float16 / bfloat16 on CPU ----------------------------------------------------------------

# Measured max |probability difference| from float32 on the 16 synthetic faces below (torch
# 2.14, AVX-512 FP16/BF16 CPU): float16 0.0006 (TinyNet) / 0.0004 (MobileNetV3-small), bfloat16
# 0.0043 / 0.0035. The bounds leave ~5x headroom and stay far below a 0.5-threshold flip margin.
MAX_PROB_DIFF = {torch.float16: 0.005, torch.bfloat16: 0.02}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _synthetic_faces(count: int = 16, size: int = 64) -> torch.Tensor:
    """(count, 3, size, size) normalised float32: rendered faces, resized as serving does."""
    rng = np.random.default_rng(0)
    faces = [
        np.asarray(
            resize_for_model(render_face(draw_attributes(rng), rng), (size, size), "bilinear")
        )
        for _ in range(count)
    ]
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _mobilenet_with_spread() -> nn.Module:
    """Seeded MobileNetV3-small whose outputs vary like a trained model's: at torchvision's
    initialisation every probability is exactly 0.5 in every dtype, a test that cannot fail."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=40)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        nn.init.normal_(net.classifier[-1].weight, std=1.0)
    return nn.Sequential(net, nn.Sigmoid()).eval()


MODELS = {
    "tiny": lambda: nn.Sequential(TinyNet(), nn.Sigmoid()).eval(),
    "mobilenet_v3_small": _mobilenet_with_spread,
}


@pytest.fixture(scope="module", params=list(MODELS))
def served_artifact(request, tmp_path_factory):
    faces = _synthetic_faces()
    data = export_torchscript(MODELS[request.param](), faces[:2])
    artifact = save_artifact(
        str(tmp_path_factory.mktemp("store")),
        request.param,
        data,
        {
            "labels": [f"label{i}" for i in range(40)],
            "input_size": [64, 64],
            "mean": list(MEAN),
            "std": list(STD),
            "output_kind": "probabilities",
        },
    )
    return load_artifact(artifact.uri), faces


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_matches_float32_on_cpu(served_artifact, dtype):
    artifact, faces = served_artifact
    cpu = torch.device("cpu")
    with torch.inference_mode():
        reference = load_torchscript(artifact, cpu, torch.float32)(faces)
        module = load_torchscript(artifact, cpu, dtype)
        out = module(faces.to(dtype))
    # Outputs spread (not all 0.5): a dtype bug would show. TinyNet moves 4 of its 40 outputs
    # with the image's colours, so the spread, not the std over all 40, is the measure.
    assert reference.max() - reference.min() > 0.2
    assert out.dtype == dtype and out.shape == reference.shape
    diff = (out.float() - reference).abs().max().item()
    assert diff <= MAX_PROB_DIFF[dtype], f"{dtype}: max |dp| {diff:.5f}"


def test_freezing_before_casting_fails_in_float16_and_load_torchscript_does_not():
    """Regression: format 1 froze at export, and a frozen module cast with .half() keeps its
    float32 constants, so the first fp16 call fails."""
    model, faces = MODELS["tiny"](), _synthetic_faces(count=2)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, faces))
    with pytest.raises(RuntimeError, match="Half"):
        frozen.half()(faces.half())

    art = save_artifact(
        "memory://half-regression", "tiny", export_torchscript(model, faces), {
            "labels": [f"l{i}" for i in range(40)], "input_size": [64, 64], "mean": list(MEAN),
            "std": list(STD), "output_kind": "probabilities",
        },
    )  # fmt: skip
    module = load_torchscript(art, torch.device("cpu"), torch.float16)
    assert module(faces.half()).dtype == torch.float16


def test_load_torchscript_refuses_a_file_that_is_not_torchscript(tmp_path):
    art = save_artifact(
        str(tmp_path), "junk", b"not a zip file at all", {
            "labels": ["a"], "input_size": [64, 64], "mean": list(MEAN), "std": list(STD),
            "output_kind": "logits",
        },
    )  # fmt: skip
    loaded = load_artifact(art.uri)  # checksums fine: the bytes are what was exported
    with pytest.raises(ArtifactError, match="is not a loadable TorchScript file"):
        load_torchscript(loaded, torch.device("cpu"), torch.float32)


def test_reexport_cli_turns_a_checkpoint_into_a_signed_format_2_artifact(tmp_path):
    """`python -m train_job.export --checkpoint ...`: the way to replace an artifact of an older
    format_version without re-training. A Lightning checkpoint as Ray Train keeps it, of an
    untrained small_cnn (weights do not matter here), on synthetic CelebA-layout data."""
    import lightning

    from model_store.keys import generate as generate_keys
    from train_job.celeba import ATTRIBUTES
    from train_job.module import FaceAttributeClassifier
    from train_job.synthetic import generate as generate_data

    generate_data(tmp_path / "data", 120)
    torch.manual_seed(0)
    model = FaceAttributeClassifier(list(ATTRIBUTES), backbone="small_cnn")
    (tmp_path / "ckpt").mkdir()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        tmp_path / "ckpt" / "checkpoint.ckpt",
    )
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keys(str(private), str(public))
    result = subprocess.run(
        [sys.executable, "-m", "train_job.export", "--checkpoint", str(tmp_path / "ckpt"),
         "--data-dir", str(tmp_path / "data"), "--model-store", str(tmp_path / "store"),
         "--image-size", "32", "--max-samples", "64", "--dataloader-workers", "0",
         "--signing-key", str(private)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "signed by" in result.stdout
    assert "test F1    tuned" in result.stdout and "F1 tuned" in result.stdout
    artifact = load_artifact(str(tmp_path / "store" / "face-attributes"), str(public))
    # Thresholds tuned on val, one per label (in (0, 1) by ArtifactMetadata's validation); the
    # test split's F1/accuracy with them and with the single one, macro and per label.
    meta = artifact.metadata
    assert list(meta.thresholds) == list(ATTRIBUTES)
    # An untrained model's scores carry no signal: every attribute keeps the single threshold
    # (train_job/thresholds.py's chance fallback; without it this assertion failed).
    assert set(meta.thresholds.values()) == {meta.threshold}
    for key in ("test_f1_tuned", "test_f1_single", "test_accuracy_tuned", "test_accuracy_single"):
        assert 0.0 <= meta.metrics[key] <= 1.0, key
    per_label = meta.metrics["test_f1_per_label"]
    assert set(per_label) == set(ATTRIBUTES) and set(per_label["Smiling"]) == {"tuned", "single"}
    assert "max F1" in meta.training["threshold_rule"]
    assert artifact.metadata.backbone == "small_cnn" and artifact.metadata.input_size == (32, 32)
    module = load_torchscript(artifact, torch.device("cpu"), torch.bfloat16)
    assert module(torch.zeros(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 40)


def test_training_cli_refuses_an_unusable_signing_key_before_training(tmp_path):
    from model_store.keys import generate as generate_keys
    from train_job.config import parse_config

    generate_keys(str(tmp_path / "k.key"), str(tmp_path / "k.pub"))
    ok = parse_config(["--data-dir", str(tmp_path), "--signing-key", str(tmp_path / "k.key")])
    assert ok.signing_key == str(tmp_path / "k.key")
    (tmp_path / "not-a-key.pem").write_text("hello")
    for bad in (tmp_path / "missing.pem", tmp_path / "not-a-key.pem", tmp_path / "k.pub"):
        with pytest.raises(SystemExit):
            parse_config(["--data-dir", str(tmp_path), "--signing-key", str(bad)])
