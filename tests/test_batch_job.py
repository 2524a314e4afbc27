"""python -m batch_job: Ray Data batch inference gives /classify's and /faces' answers, records
every bad file, reproduces the training report's test AUROC, and its RayJob manifest is valid.

How the job runs here: the /classify comparison starts it as a real subprocess
(``python -m batch_job``, RAY_ADDRESS = the session's Ray), which is how ``ray job submit`` and
a terminal start it: the command line, the exit status and a second driver on a running Ray are
exercised once. The other tests call ``batch_job.job.run`` in the test process, a driver
already connected to the session's Ray: the same pipeline without a second Python start (about
5 s less each on this 2-core box). Every run caps the model pool at one actor (``max_actors``):
the session's Ray claims 8 logical CPUs on 2 cores.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from batch_job.config import BatchConfig, build_parser, config_from_args
from batch_job.inputs import IMAGE_EXTENSIONS, InputError, list_inputs
from batch_job.job import SUMMARY_FILE, JobError, prepare_output, run
from batch_job.schema import prob_column
from tests import images
from tests.artifacts import CELEBA_LABELS, tuned_thresholds, write_tiny_artifact
from tests.harness import ROOT

# /classify rounds each probability to 6 decimals; float32 forwards of the same pixels in other
# batch compositions differ by far less.
PROB_ATOL = 2e-6


def read_output(folder: Path):
    return pq.read_table(str(folder)).to_pandas().sort_values(["input_index"], kind="stable")


def job_config(model_uri: str, inputs: list[str], output: Path, **kw) -> BatchConfig:
    return BatchConfig(model_uri, inputs, str(output), max_actors=1, batch_size=16, **kw)


def celeba_images(train_data: Path) -> Path:
    from train_job.data import CelebALayout

    return CelebALayout.discover(train_data).images_dir


def write_photos(folder: Path, train_data: Path, faces: int) -> list[Path]:
    """Generated faces and the decode cases serving handles: colours, transparency, EXIF
    rotation, an animated GIF."""
    folder.mkdir(parents=True)
    sources = sorted(celeba_images(train_data).iterdir())[:faces]
    for path in sources:
        (folder / path.name).write_bytes(path.read_bytes())
    extra = {
        "red.jpg": images.solid(images.RED),
        "green.png": images.solid(images.GREEN, fmt="PNG"),
        "blue.webp": images.solid(images.BLUE, fmt="WEBP"),
        "transparent.png": images.transparent_png(),
        "exif-rotated.jpg": images.exif_rotated_jpeg(),
        "two-frames.gif": images.two_frame_gif(),
    }
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    return sorted(folder.iterdir())


# ---- the same answers as the service ---------------------------------------------------------


@pytest.mark.serve
def test_job_and_classify_agree_on_every_image(served, ray_cluster, train_data, tmp_path):
    """An artifact with tuned per-label thresholds behind /classify and in the job: the same
    probabilities (to /classify's 6 decimals), the same labels in the same order, the same
    version. The job runs as `python -m batch_job` against the session's Ray."""
    store = tmp_path / "store"
    write_tiny_artifact(str(store), version="tuned", thresholds=tuned_thresholds())
    model_uri = str(store / "face-attributes" / "latest")
    photos = write_photos(tmp_path / "photos", train_data, faces=10)
    out = tmp_path / "out"
    served.deploy(served.base_config(model_uri=str(store / "face-attributes" / "tuned")))
    cmd = [
        sys.executable, "-m", "batch_job", "--model-uri", model_uri,
        "--input", str(tmp_path / "photos"), "--output", str(out), "--max-actors", "1",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address}
    job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"{len(photos)} images in" in job.stdout and "exactly once: True" in job.stdout

    rows = read_output(out)
    assert list(rows["path"]) == [str(p) for p in photos]
    assert rows["error"].isna().all()
    assert set(rows["model_version"]) == {"tuned"}
    for row, photo in zip(rows.itertuples(index=False), photos):
        answer = served.http.post("/classify", files={"image": (photo.name, photo.read_bytes())})
        assert answer.status_code == 200, (photo.name, answer.text)
        body = answer.json()
        served_probs = np.array([body["probabilities"][label] for label in CELEBA_LABELS])
        job_probs = np.array([getattr(row, prob_column(label)) for label in CELEBA_LABELS])
        assert np.abs(job_probs - served_probs).max() <= PROB_ATOL, photo.name
        assert list(row.labels) == [entry["label"] for entry in body["labels"]], photo.name
        assert body["model"] == {"name": row.model_name, "version": row.model_version}
    # The tuned thresholds judged: label i needs 0.1 + 0.02 i, so labels differ between rows.
    assert len({tuple(labels) for labels in rows["labels"]}) >= 3


@pytest.mark.train
@pytest.mark.slow
def test_job_auroc_on_the_test_split_is_the_training_reports(
    ray_cluster, train_data, trained_store, tmp_path, figures
):
    """The trained model over the test split (list_eval_partition 2) as a list file: the macro
    AUROC over the labels with both classes, computed as train_job.export.evaluate computes it,
    equals metadata.metrics.test_auroc (rounded there to 5 decimals) within 1e-4."""
    import torch
    from torchmetrics.classification import MultilabelAUROC

    from model_store import load_artifact
    from train_job.data import CelebALayout, read_attributes, read_partition
    from train_job.module import LabelBalance

    model_uri = str(trained_store / "face-attributes" / "trained")
    meta = load_artifact(model_uri).metadata
    layout = CelebALayout.discover(train_data)
    table = read_attributes(layout.attributes_file)
    partition = read_partition(layout.partition_file)
    test = [i for i, name in enumerate(table.image_ids) if partition[name] == 2]
    listing = tmp_path / "test-split.txt"
    listing.write_text("".join(f"{layout.images_dir / table.image_ids[i]}\n" for i in test))

    summary = run(job_config(model_uri, [str(listing)], tmp_path / "out"))
    assert summary.inputs == len(test) and summary.errors == {} and summary.missing_inputs == 0
    rows = read_output(tmp_path / "out")
    probs = torch.tensor(rows[[prob_column(label) for label in meta.labels]].to_numpy())
    targets = torch.tensor(table.labels[test][rows["input_index"].to_numpy()]).int()
    auroc = MultilabelAUROC(num_labels=len(meta.labels), average=None)
    auroc.update(probs, targets)
    balance = LabelBalance(len(meta.labels))
    balance.update(targets)
    defined = balance.compute()
    job_auroc = float(auroc.compute()[defined].mean())
    figures.update(job_auroc=round(job_auroc, 6), report=meta.metrics["test_auroc"])
    assert abs(job_auroc - meta.metrics["test_auroc"]) <= 1e-4


# ---- bad files -------------------------------------------------------------------------------


def test_bad_files_get_an_error_row_each_and_never_stop_the_job(ray_cluster, model_store, tmp_path):
    """Empty, truncated, not an image, too many pixels, a listed file that is missing: one row
    each with serving's error code; the good images are predicted; the folder's non-image file
    is left out and counted. Inputs: a folder as a file:// URI and a list file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good = {f"good-{i}.jpg": images.solid(c) for i, c in enumerate((images.RED, images.BLUE))}
    bad = {
        "empty.jpg": (b"", "empty_image"),
        "truncated.jpg": (images.solid()[:400], "undecodable_image"),
        "not-an-image.png": (b"these are not the pixels you are looking for", "undecodable_image"),
        "huge.png": (images.solid(size=(3000, 3000), fmt="PNG"), "image_too_large"),
    }
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image, and not named like one")
    listing = tmp_path / "more.txt"
    listing.write_text("# a comment, then a blank line\n\nphotos/good-0.jpg\nphotos/missing.jpg\n")

    cfg = job_config(
        served_v1(model_store), [f"file://{folder}", str(listing)], tmp_path / "out",
        max_image_pixels=4_000_000,
    )  # fmt: skip
    summary = run(cfg)
    rows = read_output(tmp_path / "out")
    inputs = 2 + len(bad) + 2
    assert summary.inputs == inputs == len(rows) == rows["input_index"].nunique()
    assert summary.missing_inputs == 0 and summary.duplicate_rows == 0
    assert summary.left_out == "1 files without an image extension left out (.txt x1)"
    by_name = {Path(p).name: r for p, r in zip(rows["path"], rows.itertuples(index=False))}
    for name, (_, code) in bad.items():
        assert by_name[name].error == code, (name, by_name[name].error_detail)
        assert by_name[name].labels is None and np.isnan(by_name[name].prob_Smiling)
    assert by_name["missing.jpg"].error == "not_found"
    assert by_name["missing.jpg"].path == str(tmp_path / "photos" / "missing.jpg")
    assert summary.errors == {
        "empty_image": 1, "image_too_large": 1, "not_found": 1, "undecodable_image": 2,
    }  # fmt: skip
    predicted = rows[rows["error"].isna()]
    assert len(predicted) == summary.images_ok == 3
    assert all(p.startswith("file://") for p in rows["path"][: 2 + len(bad)])
    written = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert written["errors"] == summary.errors and written["model"]["version"] == "v1"
    assert summary.positives["5_o_Clock_Shadow"] == 2  # good-0.jpg (red), listed twice


def served_v1(model_store: Path) -> str:
    return str(model_store / "face-attributes" / "v1")


# ---- faces -----------------------------------------------------------------------------------


@pytest.mark.serve
def test_faces_rows_are_the_faces_of_post_faces(served, tmp_path):
    """--faces on generated scenes: a row per face /faces finds, with the same box, landmarks
    and score, and the same answers; a photo without a face and a bad file keep one row each."""
    from train_job.synthetic import SCENES_DIR, generate_scenes

    generate_scenes(tmp_path, 3, seed=7)
    scenes = sorted((tmp_path / SCENES_DIR).iterdir())
    (tmp_path / SCENES_DIR / "zz-no-face.jpg").write_bytes(images.solid(images.GREEN))
    (tmp_path / SCENES_DIR / "zz-empty.jpg").write_bytes(b"")
    cfg = job_config(
        served.model_uri("v1"), [str(tmp_path / SCENES_DIR)], tmp_path / "out", faces=True,
        detector_uri=served.detector_uri(),
    )  # fmt: skip
    summary = run(cfg)
    rows = read_output(tmp_path / "out").sort_values(["input_index", "face"])
    assert summary.missing_inputs == 0 and summary.duplicate_rows == 0
    found_total = 0
    for scene in scenes:
        mine = rows[rows["path"] == str(scene)]
        body = served.http.post("/faces", files={"image": (scene.name, scene.read_bytes())})
        assert body.status_code == 200, body.text
        faces = body.json()["faces"]
        found_total += len(faces)
        if not faces:  # the detector missed this scene's faces: one row says so
            assert list(mine["faces_in_image"]) == [0] and mine["face"].isna().all()
            continue
        assert len(mine) == len(faces), (scene.name, len(mine), len(faces))
        for row, face in zip(mine.itertuples(index=False), faces):
            assert row.faces_in_image == body.json()["faces_found"]
            assert np.allclose(row.face_box, face["box"], atol=0.11), (row.face_box, face)
            landmarks = [face["landmarks"][name] for name in LANDMARK_ORDER]
            assert np.allclose(np.stack(row.face_landmarks), landmarks, atol=0.11)
            assert abs(row.face_score - face["score"]) <= 1e-5
            probs = [getattr(row, prob_column(label)) for label in CELEBA_LABELS]
            assert (
                np.abs(np.array(probs) - [face["probabilities"][k] for k in CELEBA_LABELS]).max()
                <= PROB_ATOL
            )
            assert list(row.labels) == [entry["label"] for entry in face["labels"]]
    assert summary.faces == found_total >= 3
    no_face = rows[rows["path"].str.endswith("zz-no-face.jpg")]
    assert len(no_face) == 1 and no_face["faces_in_image"].iloc[0] == 0
    assert no_face["face"].isna().all() and no_face["error"].isna().all()
    assert no_face["labels"].iloc[0] is None
    empty = rows[rows["path"].str.endswith("zz-empty.jpg")]
    assert list(empty["error"]) == ["empty_image"]
    assert set(rows["detector_version"]) == {"mtcnn-1"}


LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


# ---- inputs, options, output folder (no Ray) -------------------------------------------------


def test_inputs_folder_list_file_and_single_image(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.JPG", "a/1.png", "a/b/3.webp", "a/skip.json", "one.gif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "list.txt").write_text("1.png\n# no\n\n/abs/x.jpg\ns3://bucket/y.jpg\n")
    found = list_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "list.txt")])
    assert found.paths == [
        str(tmp_path / "a" / "1.png"), str(tmp_path / "a" / "2.JPG"),
        str(tmp_path / "a" / "b" / "3.webp"),
        str(tmp_path / "a" / "1.png"), "/abs/x.jpg", "s3://bucket/y.jpg",
    ]  # fmt: skip
    assert found.left_out == {".json": 1, ".txt": 1}
    assert list_inputs([str(tmp_path / "one.gif")]).paths == [str(tmp_path / "one.gif")]
    everything = list_inputs([str(tmp_path / "a")], extensions=("*",))
    assert len(everything.paths) == 5 and not everything.left_out
    with pytest.raises(InputError, match="no such folder or file"):
        list_inputs([str(tmp_path / "nope")])


def test_defaults_are_servings(tmp_path):
    from serve_app.api.schema import FacesQuery
    from serve_app.config import AppArgs

    cfg = config_from_args(
        build_parser().parse_args(
            ["--model-uri", "m", "--input", "a", "b", "--input", "c", "--output", "o",
             "--extensions", "JPG,png"]
        )
    )  # fmt: skip
    assert cfg.inputs == ["a", "b", "c"] and cfg.extensions == (".jpg", ".png")
    assert cfg.max_image_pixels == AppArgs().max_image_pixels
    assert cfg.max_faces == AppArgs().max_faces
    assert cfg.detect_side == AppArgs().faces_detect_side
    assert cfg.min_face_px == FacesQuery().min_face_px
    assert set(IMAGE_EXTENSIONS) >= {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def test_a_non_empty_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-0.parquet").write_bytes(b"an earlier run")
    with pytest.raises(JobError, match="--overwrite"):
        prepare_output(str(out), overwrite=False)
    prepare_output(str(out), overwrite=True)
    assert out.is_dir() and not any(out.iterdir())
    prepare_output(str(tmp_path / "new" / "folder"), overwrite=False)


# ---- the RayJob manifest ---------------------------------------------------------------------

BATCH_MANIFEST = ROOT / "kuberay" / "rayjob-batch.yaml"


@pytest.mark.deploy
def test_batch_rayjob_validates_against_the_crd_and_the_job_cli():
    """Validated as tests/test_deploy_manifests.py validates the others (its strict CRD schema
    and operator rules); its entrypoint parses with batch_job's parser and reads the store the
    RayService serves from; images and Ray version as the training RayJob's."""
    import jsonschema
    import ray

    from tests.required import require
    from tests.test_deploy_manifests import (
        CRD_DIR,
        CRD_FILES,
        manifest,
        missing_crds,
        operator_rule_violations,
        strict,
    )

    require("crds", missing_crds())
    crd = yaml.safe_load((CRD_DIR / CRD_FILES["RayJob"]).read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    doc = yaml.safe_load(BATCH_MANIFEST.read_text())
    assert doc["kind"] == "RayJob" and doc["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"])).validate(doc)
    assert operator_rule_violations(doc) == []

    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "batch_job"]
    cfg = config_from_args(build_parser().parse_args(argv[3:]))
    service = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    model = next(
        d for d in service["applications"][0]["deployments"] if d["name"] == "FaceAttributeModel"
    )
    assert cfg.model_uri == model["user_config"]["model_uri"]
    spec = doc["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    workers = spec["workerGroupSpecs"][0]
    gpus = int(
        workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert cfg.max_actors == workers["replicas"] * gpus  # one model actor per GPU
    training = manifest("RayJob")["spec"]["rayClusterSpec"]
    images_of = lambda s: sorted(  # noqa: E731
        c["image"]
        for g in [s["headGroupSpec"], *s["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    )
    assert images_of(spec) == images_of(training)
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
