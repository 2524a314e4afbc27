"""Rollouts under load and artifacts that must be refused while the old model keeps serving."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from model_store.integrity import artifact_digest
from tests import images
from tests.harness import wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import percentile


def test_rollout_through_config_under_load(served, figures):
    with ClosedLoopLoad(served.url, clients=6, max_seconds=120) as load:
        wait_for(lambda: load.count() > 20, 30, "traffic before the rollout")
        served.deploy(served.base_config(model_version="v2"))
        wait_for(
            lambda: load.result.versions and load.result.versions[-1] == "v2", 60, "v2 answers"
        )
        n = load.count()
        wait_for(lambda: load.count() > n + 30, 60, "traffic after the rollout")
    statuses = dict(load.result.statuses)
    assert statuses == {200: load.count()}, statuses
    versions = load.result.versions
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and versions[-1] == "v2"
    figures.update(
        requests=load.count(),
        failed=0,
        p99_ms=round(percentile(load.result.latencies_200, 0.99) * 1000),
        v1_answers=switch,
        v2_answers=len(versions) - switch,
    )


def _copy_version(store, source: str, target: str):
    path = store / "face-attributes" / target
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(store / "face-attributes" / source, path)
    return path


def _truncate_with_matching_checksum(path):
    model = path / "model.pt"
    data = model.read_bytes()[:500]
    model.write_bytes(data)
    meta = json.loads((path / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    # Re-sealed as an exporter would, so the loader itself is what refuses the file.
    meta["digest"] = artifact_digest(meta["sha256"], meta)
    (path / "metadata.json").write_text(json.dumps(meta))


def _edit_threshold(path):
    meta = json.loads((path / "metadata.json").read_text())
    meta["threshold"] = 0.05  # still valid metadata: only the digest can tell
    (path / "metadata.json").write_text(json.dumps(meta))


def _drop_labels(path):
    meta = json.loads((path / "metadata.json").read_text())
    del meta["labels"]
    (path / "metadata.json").write_text(json.dumps(meta))


def _flip_a_byte(path):
    model = path / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("broken", "expected_error"),
    [
        (_flip_a_byte, "sha256 mismatch"),
        (_truncate_with_matching_checksum, "not a loadable TorchScript file"),
        (_edit_threshold, "digest mismatch"),
        (_drop_labels, "labels"),
    ],
)
def test_broken_artifact_refused_previous_keeps_serving(
    served, model_store, broken, expected_error, figures
):
    path = _copy_version(model_store, "v1", f"broken-{broken.__name__}")
    broken(path)
    served.deploy(served.base_config(model_version=path.name))
    meta = served.metadata()
    assert meta["version"] == "v1", "the previous model must keep serving"
    assert expected_error in meta["serving"]["last_error"]
    r = served.http.post("/classify", files={"image": ("a.jpg", images.solid(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["model"]["version"] == "v1"
    figures.update(error=meta["serving"]["last_error"][:160])
