"""The artifact contract: versioned store, latest pointer, checksums, metadata, URIs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model_store import ArtifactError, export_frozen_torchscript, list_versions, load_artifact
from model_store.store import resolve_model_uri
from tests.artifacts import TinyNet, write_tiny_artifact


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
    data = export_frozen_torchscript(model, example)
    import io

    reloaded = torch.jit.load(io.BytesIO(data))
    torch.testing.assert_close(reloaded(example), model(example))

    class Stochastic(torch.nn.Module):  # traced output cannot match eager: export must refuse
        def forward(self, x):
            return x + torch.rand_like(x)

    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_frozen_torchscript(Stochastic(), example)


def test_models_list_cli(tmp_path):
    write_tiny_artifact(str(tmp_path), version="20260101-000000")
    write_tiny_artifact(str(tmp_path), version="20260102-000000")
    rows = list_versions(str(tmp_path))
    assert [r["version"] for r in rows] == ["20260102-000000", "20260101-000000"]
    out = subprocess.run(
        [sys.executable, "-m", "train_job.models", "list", "--model-store", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "NAME" in out and "20260102-000000 (latest)" in out and "tiny-test-net" in out
