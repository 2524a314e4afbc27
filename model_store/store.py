"""A versioned model store on any filesystem fsspec or pyarrow can open.

Layout: ``<store>/<name>/<version>/{model.pt, metadata.json}`` and ``<store>/<name>/latest``,
a one-line text file naming the newest version (a file, not a symlink, so that the same
layout works on object stores).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
from pydantic import ValidationError

from model_store.metadata import ArtifactMetadata

MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
LATEST_FILE = "latest"


class ArtifactError(Exception):
    """An artifact that cannot be used: missing, tampered with, or with bad metadata."""


@dataclass(frozen=True)
class LoadedArtifact:
    uri: str  # the resolved version directory
    metadata: ArtifactMetadata
    model_bytes: bytes


def _filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec for local paths and the protocols it has installed, pyarrow's filesystems (S3,
    GCS, HDFS ship inside pyarrow) for the rest."""
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError):
        import pyarrow.fs
        from fsspec.implementations.arrow import ArrowFSWrapper

        arrow_fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return ArrowFSWrapper(arrow_fs), path


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts)


def _read_text(fs: fsspec.AbstractFileSystem, path: str) -> str:
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8")


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as f:
        f.write(data)


def resolve_model_uri(model_uri: str) -> str:
    """``<store>/<name>/latest``, ``<store>/<name>`` or ``<store>/<name>/<version>`` -> the
    version directory URI (same scheme as given)."""
    fs, path = _filesystem(model_uri)
    path = path.rstrip("/")
    if posixpath.basename(path) == LATEST_FILE:
        pointer = path
    elif fs.isfile(_join(path, LATEST_FILE)):
        pointer = _join(path, LATEST_FILE)
    else:
        if not fs.exists(_join(path, METADATA_FILE)):
            raise ArtifactError(
                f"no model artifact at {model_uri!r}: expected <store>/<name>/latest or "
                f"<store>/<name>/<version> containing {METADATA_FILE} and {MODEL_FILE}"
            )
        return model_uri.rstrip("/")
    if not fs.isfile(pointer):
        raise ArtifactError(
            f"no 'latest' pointer at {model_uri!r}: train a model first "
            "(python -m train_job ...) or name a version directory"
        )
    version = _read_text(fs, pointer).strip()
    if not version or "/" in version:
        raise ArtifactError(f"'latest' pointer at {model_uri!r} is malformed: {version!r}")
    base = model_uri.rstrip("/")
    if base.endswith("/" + LATEST_FILE) or base == LATEST_FILE:
        base = base[: -len(LATEST_FILE)].rstrip("/") or "."
    return _join(base, version)


def load_artifact(model_uri: str) -> LoadedArtifact:
    """Read and verify an artifact. Raises ArtifactError saying what is wrong and how to fix it."""
    version_uri = resolve_model_uri(model_uri)
    fs, path = _filesystem(version_uri)
    try:
        raw_metadata = json.loads(_read_text(fs, _join(path, METADATA_FILE)))
    except FileNotFoundError as e:
        raise ArtifactError(f"{METADATA_FILE} missing in {version_uri!r}") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{METADATA_FILE} in {version_uri!r} is not valid JSON: {e}") from e
    try:
        metadata = ArtifactMetadata.model_validate(raw_metadata)
    except ValidationError as e:
        raise ArtifactError(f"{METADATA_FILE} in {version_uri!r} is invalid: {e}") from e
    try:
        with fs.open(_join(path, MODEL_FILE), "rb") as f:
            model_bytes = f.read()
    except FileNotFoundError as e:
        raise ArtifactError(f"{MODEL_FILE} missing in {version_uri!r}") from e
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != metadata.sha256:
        raise ArtifactError(
            f"sha256 mismatch for {_join(version_uri, MODEL_FILE)}: file has {digest}, "
            f"{METADATA_FILE} says {metadata.sha256}. The file was modified or truncated; "
            "re-export it rather than editing the checksum."
        )
    return LoadedArtifact(uri=version_uri, metadata=metadata, model_bytes=model_bytes)


def new_version_name(now: _dt.datetime | None = None) -> str:
    """Sortable, human-readable, unique per second: 20261124-004512."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S")


def save_artifact(
    store_uri: str,
    name: str,
    model_bytes: bytes,
    metadata: dict[str, Any],
    version: str | None = None,
) -> LoadedArtifact:
    """Write a new version and then move ``latest`` to it (the pointer is written last, so a
    reader never sees a half-written version). ``metadata`` gets name, version and sha256."""
    fs, store_path = _filesystem(store_uri)
    model_dir = _join(store_path, name)
    version = version or new_version_name()
    candidate, n = version, 1
    while fs.exists(_join(model_dir, candidate)):
        n += 1
        candidate = f"{version}-{n}"
    version = candidate
    full = {**metadata, "name": name, "version": version}
    full["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    validated = ArtifactMetadata.model_validate(full)  # refuse to write what serving would refuse

    version_dir = _join(model_dir, version)
    fs.makedirs(version_dir, exist_ok=True)
    _write_bytes(fs, _join(version_dir, MODEL_FILE), model_bytes)
    _write_bytes(
        fs,
        _join(version_dir, METADATA_FILE),
        json.dumps(validated.model_dump(mode="json"), indent=2).encode(),
    )
    _write_latest(fs, model_dir, version)
    return LoadedArtifact(
        uri=_join(store_uri, name, version), metadata=validated, model_bytes=model_bytes
    )


def _write_latest(fs: fsspec.AbstractFileSystem, model_dir: str, version: str) -> None:
    pointer = _join(model_dir, LATEST_FILE)
    tmp = pointer + ".tmp"
    _write_bytes(fs, tmp, (version + "\n").encode())
    fs.mv(tmp, pointer)  # a rename on local disks: readers see the old or the new pointer


def list_versions(store_uri: str) -> list[dict[str, Any]]:
    """Every artifact in the store, newest first per model, for ``python -m train_job.models list``."""
    fs, store_path = _filesystem(store_uri)
    if not fs.exists(store_path):
        return []
    rows: list[dict[str, Any]] = []
    for model_dir in sorted(fs.ls(store_path, detail=False)):
        if not fs.isdir(model_dir):
            continue
        name = posixpath.basename(model_dir.rstrip("/"))
        latest_path = _join(model_dir, LATEST_FILE)
        latest = _read_text(fs, latest_path).strip() if fs.isfile(latest_path) else None
        for version_dir in sorted(fs.ls(model_dir, detail=False), reverse=True):
            meta_path = _join(version_dir, METADATA_FILE)
            if not fs.isfile(meta_path):
                continue
            try:
                meta = json.loads(_read_text(fs, meta_path))
            except json.JSONDecodeError:
                meta = {}
            model_path = _join(version_dir, MODEL_FILE)
            size = fs.size(model_path) if fs.exists(model_path) else 0
            version = posixpath.basename(version_dir.rstrip("/"))
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "latest": version == latest,
                    "backbone": meta.get("backbone"),
                    "input_size": meta.get("input_size"),
                    "val_auroc": meta.get("metrics", {}).get("val_auroc"),
                    "test_auroc": meta.get("metrics", {}).get("test_auroc"),
                    "size_bytes": size,
                    "created_at": meta.get("created_at"),
                    "path": version_dir,
                }
            )
    return rows
