"""The whole artifact is verified before it is served: metadata.json edits, old formats, races.

Each tampering test edits a saved artifact's metadata.json so that it is still valid JSON and
valid metadata (the old sha256 over model.pt alone let these through and served wrong answers
with HTTP 200).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec.implementations.local
import pytest

from model_store import ArtifactError, load_artifact, save_artifact
from tests.artifacts import CELEBA_LABELS, tuned_thresholds, write_tiny_artifact

ROOT = Path(__file__).resolve().parent.parent


def _metadata_path(store: Path, version: str) -> Path:
    return store / "face-attributes" / version / "metadata.json"


def _edit_metadata(store: Path, version: str, edit) -> None:
    path = _metadata_path(store, version)
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


def _swap_first_two_labels(meta: dict) -> None:
    meta["labels"][0], meta["labels"][1] = meta["labels"][1], meta["labels"][0]


TAMPERING = {
    "threshold": lambda meta: meta.update(threshold=0.9),
    "labels swapped": _swap_first_two_labels,
    "mean": lambda meta: meta["mean"].__setitem__(0, 0.4),
    "input_size": lambda meta: meta.update(input_size=[32, 32]),
    "unknown key added": lambda meta: meta.update(note="edited by hand"),
}


@pytest.mark.parametrize("edit", list(TAMPERING.values()), ids=list(TAMPERING))
def test_edited_metadata_is_refused(tmp_path, edit):
    art = write_tiny_artifact(str(tmp_path), version="x")
    _edit_metadata(tmp_path, "x", edit)
    with pytest.raises(ArtifactError, match=r"digest mismatch(.|\n)*re-export") as caught:
        load_artifact(art.uri)
    assert "metadata.json" in str(caught.value)


def test_edited_tuned_threshold_is_refused(tmp_path):
    """A per-label threshold tuned at export and edited afterwards (still valid metadata)."""
    art = write_tiny_artifact(str(tmp_path), version="x", thresholds=tuned_thresholds())
    assert load_artifact(art.uri).metadata.thresholds == tuned_thresholds()
    _edit_metadata(tmp_path, "x", lambda meta: meta["thresholds"].update(Smiling=0.05))
    with pytest.raises(ArtifactError, match="digest mismatch"):
        load_artifact(art.uri)


def test_untouched_artifact_still_loads_after_reformatting_json(tmp_path):
    """The digest is over canonical JSON: re-indenting or reordering keys changes nothing."""
    art = write_tiny_artifact(str(tmp_path), version="x")
    path = _metadata_path(tmp_path, "x")
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(list(meta.items())))))  # other order, no indent
    assert load_artifact(art.uri).metadata == art.metadata


def test_format_version_1_artifact_is_refused_with_reexport_hint(tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="old")

    def as_written_by_format_1(meta: dict) -> None:
        meta["format_version"] = 1
        meta.pop("digest", None)
        meta.pop("signature", None)

    _edit_metadata(tmp_path, "old", as_written_by_format_1)
    with pytest.raises(ArtifactError, match="format_version 1") as caught:
        load_artifact(art.uri)
    assert "python -m train_job" in str(caught.value)


def test_newer_format_version_is_refused(tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="new")
    _edit_metadata(tmp_path, "new", lambda meta: meta.update(format_version=99))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_artifact(art.uri)


def test_missing_digest_is_refused(tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="x")
    _edit_metadata(tmp_path, "x", lambda meta: meta.pop("digest", None))
    with pytest.raises(ArtifactError, match="digest"):
        load_artifact(art.uri)


TINY_METADATA = {
    "labels": list(CELEBA_LABELS),
    "input_size": [64, 64],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "output_kind": "logits",
}


def test_same_version_name_at_the_same_time_gives_two_versions(tmp_path, monkeypatch):
    """Forced collision: both writers look for a free name before either creates it (what two
    exports in the same second do). Each must still get its own directory."""
    model_bytes = write_tiny_artifact(str(tmp_path / "scratch")).model_bytes
    both_looked = threading.Barrier(2, timeout=10)
    waited: set[int] = set()
    real_exists = fsspec.implementations.local.LocalFileSystem.exists

    def exists_after_both_looked(self, path, **kwargs):
        found = real_exists(self, path, **kwargs)
        if str(path).endswith("/face-attributes/same") and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            both_looked.wait()
        return found

    monkeypatch.setattr(
        fsspec.implementations.local.LocalFileSystem, "exists", exists_after_both_looked
    )
    results, errors = [], []

    def export(trained_by: str) -> None:
        try:
            meta = {**TINY_METADATA, "training": {"by": trained_by}}
            results.append(
                save_artifact(str(tmp_path), "face-attributes", model_bytes, meta, "same")
            )
        except Exception as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=export, args=(who,)) for who in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    versions = sorted(r.metadata.version for r in results)
    assert versions == ["same", "same-2"]
    by_version = {v: load_artifact(str(tmp_path / "face-attributes" / v)) for v in versions}
    assert {a.metadata.training["by"] for a in by_version.values()} == {"a", "b"}


SAVE_MANY = """
import sys, time
from model_store import save_artifact
store, who, start, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
model_bytes = open(sys.argv[5], "rb").read()
meta = {"labels": ["a", "b"], "input_size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3,
        "output_kind": "logits", "training": {"by": who}}
time.sleep(max(0.0, start - time.time()))
for i in range(count):
    save_artifact(store, "face-attributes", model_bytes, {**meta, "training": {"by": who, "i": i}},
                  version="same")
"""


def test_two_processes_exporting_one_version_name_never_share_a_directory(tmp_path):
    """No forcing: two real processes save 10 artifacts each under the same version name at the
    same moment. Every save must land in its own directory and load."""
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(write_tiny_artifact(str(tmp_path / "scratch")).model_bytes)
    store, count, start = tmp_path / "store", 10, time.time() + 8  # after both import torch
    args = [str(store), "", str(start), str(count), str(model_file)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SAVE_MANY, *args[:1], who, *args[2:]],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    versions = [d.name for d in (store / "face-attributes").iterdir() if d.is_dir()]
    assert len(versions) == 2 * count, sorted(versions)
    writers = {
        (a.metadata.training["by"], a.metadata.training["i"])
        for a in (load_artifact(str(store / "face-attributes" / v)) for v in versions)
    }
    assert len(writers) == 2 * count


# --- optional ed25519 signature ---------------------------------------------------------------


def _generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Through the real CLI, as an operator would."""
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    subprocess.run(
        [sys.executable, "-m", "model_store.keys", "generate",
         "--private-key", str(private), "--public-key", str(public)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: _generate_keys(directory, name) for name in ("ours", "theirs")}


def test_keys_cli_writes_pem_with_a_private_private_key(keys, tmp_path):
    private, public = keys["ours"]
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = subprocess.run(
        [sys.executable, "-m", "model_store.keys", "generate",
         "--private-key", str(private), "--public-key", str(tmp_path / "new.pub")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr


def test_signed_artifact_verifies_with_its_public_key(keys, tmp_path):
    private, public = keys["ours"]
    art = write_tiny_artifact(str(tmp_path), version="s", signing_key=str(private))
    assert art.metadata.signature is not None
    by_path = load_artifact(art.uri, trusted_public_key=str(public))
    by_pem_text = load_artifact(art.uri, trusted_public_key=public.read_text())
    assert by_path.metadata == by_pem_text.metadata == art.metadata
    assert load_artifact(art.uri).metadata.version == "s"  # no key given: not required


def test_unsigned_artifact_refused_when_a_key_is_required(keys, tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="u")
    with pytest.raises(ArtifactError, match="not signed"):
        load_artifact(art.uri, trusted_public_key=str(keys["ours"][1]))


def test_signature_by_another_key_refused(keys, tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="t", signing_key=str(keys["theirs"][0]))
    with pytest.raises(ArtifactError, match="not by the trusted key"):
        load_artifact(art.uri, trusted_public_key=str(keys["ours"][1]))


def test_signature_copied_from_another_artifact_refused(keys, tmp_path):
    """Same key id, wrong signature bytes: the signature itself must be checked."""
    private, public = keys["ours"]
    write_tiny_artifact(str(tmp_path), version="a", signing_key=str(private))
    other = write_tiny_artifact(str(tmp_path), version="b", signing_key=str(private))
    signature_a = json.loads(_metadata_path(tmp_path, "a").read_text())["signature"]
    _edit_metadata(tmp_path, "b", lambda meta: meta.update(signature=signature_a))
    with pytest.raises(ArtifactError, match="does not verify"):
        load_artifact(other.uri, trusted_public_key=str(public))


def test_tampered_metadata_refused_even_though_signed(keys, tmp_path):
    private, public = keys["ours"]
    art = write_tiny_artifact(str(tmp_path), version="s", signing_key=str(private))
    _edit_metadata(tmp_path, "s", lambda meta: meta.update(threshold=0.2))
    with pytest.raises(ArtifactError, match="digest mismatch"):
        load_artifact(art.uri, trusted_public_key=str(public))


def test_tampered_and_redigested_metadata_refused_by_the_signature(keys, tmp_path):
    """Someone who edits a field AND recomputes the digest still cannot re-sign it."""
    from model_store.integrity import artifact_digest

    private, public = keys["ours"]
    art = write_tiny_artifact(str(tmp_path), version="s", signing_key=str(private))

    def edit_and_redigest(meta: dict) -> None:
        meta["threshold"] = 0.2
        meta["digest"] = artifact_digest(meta["sha256"], meta)

    _edit_metadata(tmp_path, "s", edit_and_redigest)
    assert load_artifact(art.uri).metadata.threshold == 0.2  # the digest alone is fooled
    with pytest.raises(ArtifactError, match="does not verify"):
        load_artifact(art.uri, trusted_public_key=str(public))


def test_unusable_trusted_key_is_an_artifact_error(keys, tmp_path):
    art = write_tiny_artifact(str(tmp_path), version="s", signing_key=str(keys["ours"][0]))
    with pytest.raises(ArtifactError, match="trusted public key unusable"):
        load_artifact(art.uri, trusted_public_key=str(tmp_path / "missing.pub"))
    with pytest.raises(ArtifactError, match="trusted public key unusable"):
        load_artifact(art.uri, trusted_public_key=str(keys["ours"][0]))  # the private half


def test_list_versions_says_which_versions_verify(tmp_path):
    from model_store import list_versions

    write_tiny_artifact(str(tmp_path), version="good")
    write_tiny_artifact(str(tmp_path), version="edited")
    _edit_metadata(tmp_path, "edited", lambda meta: meta.update(threshold=0.9))
    integrity = {r["version"]: r["integrity"] for r in list_versions(str(tmp_path))}
    assert integrity["good"] == "ok"
    assert integrity["edited"].startswith("digest mismatch")
