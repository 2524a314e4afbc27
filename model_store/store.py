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
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError

from model_store import signing
from model_store.integrity import artifact_digest
from model_store.metadata import FORMAT_VERSION, ArtifactMetadata

MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
LATEST_FILE = "latest"
CLAIM_FILE = ".claimed"  # object stores only: the exclusive-create marker of a version


class ArtifactError(Exception):
    """An artifact that cannot be used: missing, tampered with, or with bad metadata."""


@dataclass(frozen=True)
class LoadedArtifact:
    uri: str  # the resolved version directory
    metadata: ArtifactMetadata  # or the schema load_artifact was given (DetectorMetadata)
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


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem the store opens ``uri`` with, and the path on it: the one layer every
    reader of local paths and URIs shares (the batch job's inputs and outputs use it too)."""
    return _filesystem(uri)


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


REEXPORT_HINT = (
    "Re-export it: re-train with `python -m train_job --data-dir ...`, or export the run's "
    "Ray checkpoint again with `python -m train_job.export --checkpoint <checkpoint dir> "
    "--data-dir ... --image-size ...`"
)


def load_artifact(
    model_uri: str,
    trusted_public_key: str | None = None,
    schema: type[BaseModel] = ArtifactMetadata,
) -> LoadedArtifact:
    """Read and verify an artifact. Raises ArtifactError saying what is wrong and how to fix it.

    Checks, in order: metadata.json parses, its ``format_version`` is FORMAT_VERSION, it is valid
    metadata, model.pt matches ``sha256``, the digest over both files matches ``digest``, and,
    when ``trusted_public_key`` (a PEM public key file's path, or the PEM text) is given, that
    ``signature`` is that key's ed25519 signature of the digest. Without a trusted key a
    signature is neither required nor checked. ``schema``: the metadata's model
    (DetectorMetadata for a face detector); another kind of artifact is refused by its
    ``format``.
    """
    version_uri = resolve_model_uri(model_uri)
    fs, path = _filesystem(version_uri)
    raw_metadata = _read_metadata_json(fs, path, version_uri)
    _check_format_version(raw_metadata, version_uri)
    try:
        metadata = schema.model_validate(raw_metadata)
    except ValidationError as e:
        raise ArtifactError(f"{METADATA_FILE} in {version_uri!r} is invalid: {e}") from e
    try:
        with fs.open(_join(path, MODEL_FILE), "rb") as f:
            model_bytes = f.read()
    except FileNotFoundError as e:
        raise ArtifactError(f"{MODEL_FILE} missing in {version_uri!r}") from e
    model_sha256 = hashlib.sha256(model_bytes).hexdigest()
    if model_sha256 != metadata.sha256:
        raise ArtifactError(
            f"sha256 mismatch for {_join(version_uri, MODEL_FILE)}: file has {model_sha256}, "
            f"{METADATA_FILE} says {metadata.sha256}. The file was modified or truncated; "
            "re-export it rather than editing the checksum."
        )
    _check_digest(metadata, artifact_digest(model_sha256, raw_metadata), version_uri)
    if trusted_public_key is not None:
        _check_signature(metadata, trusted_public_key, version_uri)
    return LoadedArtifact(uri=version_uri, metadata=metadata, model_bytes=model_bytes)


def _read_metadata_json(
    fs: fsspec.AbstractFileSystem, path: str, version_uri: str
) -> dict[str, Any]:
    try:
        raw = json.loads(_read_text(fs, _join(path, METADATA_FILE)))
    except FileNotFoundError as e:
        raise ArtifactError(f"{METADATA_FILE} missing in {version_uri!r}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{METADATA_FILE} in {version_uri!r} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ArtifactError(f"{METADATA_FILE} in {version_uri!r} is not a JSON object")
    return raw


def _check_format_version(raw_metadata: dict[str, Any], version_uri: str) -> None:
    """Before validation: another format's fields need not fit this one's schema."""
    found = raw_metadata.get("format_version")
    if found == FORMAT_VERSION:
        return
    if isinstance(found, int) and found > FORMAT_VERSION:
        raise ArtifactError(
            f"{METADATA_FILE} in {version_uri!r} has format_version {found}, written by a "
            f"newer model_store; this one reads format_version {FORMAT_VERSION} only. Upgrade "
            "the serving code, or re-export the model with this version's train_job."
        )
    raise ArtifactError(
        f"{METADATA_FILE} in {version_uri!r} has format_version {found}; this model_store reads "
        f"format_version {FORMAT_VERSION} only (it verifies a digest over the whole artifact "
        f"and stores weights unfrozen so they can run in float16/bfloat16). {REEXPORT_HINT}."
    )


def _check_digest(metadata: BaseModel, computed: str, version_uri: str) -> None:
    if metadata.digest is None:
        raise ArtifactError(
            f"{METADATA_FILE} in {version_uri!r} has no digest, so an edit to it cannot be "
            f"detected. {REEXPORT_HINT}."
        )
    if computed != metadata.digest:
        raise ArtifactError(
            f"digest mismatch for {version_uri}: {MODEL_FILE} + {METADATA_FILE} hash to "
            f"{computed}, {METADATA_FILE} says {metadata.digest}. {MODEL_FILE} matches its "
            f"sha256, so {METADATA_FILE} itself was edited after export (labels, threshold, "
            "mean/std, input_size or another field now differ from what training wrote); "
            "re-export the artifact rather than editing the digest. "
            f"{REEXPORT_HINT}."
        )


def _check_signature(metadata: BaseModel, trusted_public_key: str, version_uri: str) -> None:
    try:
        trusted = signing.load_public_key(trusted_public_key)
    except signing.KeyFileError as e:
        raise ArtifactError(f"trusted public key unusable: {e}") from e
    assert metadata.digest is not None  # _check_digest ran first
    problem = signing.signature_problem(metadata.digest, metadata.signature, trusted)
    if problem is not None:
        raise ArtifactError(
            f"artifact {version_uri} refused: {problem}. Serve only artifacts signed at export "
            "(`python -m train_job ... --signing-key <private key>`) with the key whose public "
            "half serving trusts."
        )


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
    signing_key: str | Ed25519PrivateKey | None = None,
    schema: type[BaseModel] = ArtifactMetadata,
) -> LoadedArtifact:
    """Write a new version and then move ``latest`` to it (the pointer is written last, so a
    reader never sees a half-written version). ``metadata`` gets format_version, name, version,
    sha256 and digest; with ``signing_key`` (a PEM private key file's path, the PEM text, or a
    key) also an ed25519 ``signature`` of the digest.

    Two writers asking for the same version name at once get different directories
    (``<version>``, ``<version>-2``, ...): see _claim_version_dir.
    """
    private_key = _signing_key(signing_key)
    fs, store_path = _filesystem(store_uri)
    model_dir = _join(store_path, name)
    model_sha256 = hashlib.sha256(model_bytes).hexdigest()
    base = {**metadata, "format_version": FORMAT_VERSION, "name": name, "sha256": model_sha256}
    base.pop("digest", None)
    base.pop("signature", None)
    version = version or new_version_name()
    # Refuse to write what serving would refuse, before claiming a version directory.
    schema.model_validate({**base, "version": version})
    version = _claim_version_dir(fs, model_dir, version)
    document = schema.model_validate({**base, "version": version}).model_dump(
        mode="json", exclude={"digest", "signature"}
    )
    document["digest"] = artifact_digest(model_sha256, document)
    if private_key is not None:
        document["signature"] = signing.sign_digest(document["digest"], private_key).model_dump()
    validated = schema.model_validate(document)

    version_dir = _join(model_dir, version)
    _write_bytes(fs, _join(version_dir, MODEL_FILE), model_bytes)
    _write_bytes(fs, _join(version_dir, METADATA_FILE), json.dumps(document, indent=2).encode())
    _write_latest(fs, model_dir, version)
    return LoadedArtifact(
        uri=_join(store_uri, name, version), metadata=validated, model_bytes=model_bytes
    )


def _signing_key(signing_key: str | Ed25519PrivateKey | None) -> Ed25519PrivateKey | None:
    if signing_key is None:
        return None
    try:
        return signing.load_private_key(signing_key)
    except signing.KeyFileError as e:
        raise ArtifactError(f"cannot sign the artifact: {e}") from e


def _claim_version_dir(fs: fsspec.AbstractFileSystem, model_dir: str, version: str) -> str:
    """Create ``<model_dir>/<version>`` (or ``<version>-N``, the first free N >= 2) so that no
    other writer can get the same one, and return the name.

    Local disks and fsspec's memory store: ``makedirs(exist_ok=False)`` is the claim (mkdir is
    atomic). Object stores have no directories, so the claim is a CLAIM_FILE marker written with
    exclusive create (``pipe_file(mode="create")``, conditional PUT where the store supports it).
    Where it does not (NotImplementedError/ValueError), two writers naming the same version in
    the same second may still share a directory: give each writer its own ``version``.
    """
    n = 1
    while True:
        candidate = version if n == 1 else f"{version}-{n}"
        if _claim(fs, _join(model_dir, candidate)):
            return candidate
        n += 1


def _claim(fs: fsspec.AbstractFileSystem, version_dir: str) -> bool:
    if fs.exists(version_dir):
        return False
    try:
        fs.makedirs(version_dir, exist_ok=False)
    except FileExistsError:
        return False
    if _has_real_directories(fs):
        return True
    try:
        fs.pipe_file(_join(version_dir, CLAIM_FILE), b"", mode="create")
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError, TypeError):
        pass  # no exclusive create here: see _claim_version_dir
    return True


def _has_real_directories(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"file", "local", "memory"} & set(protocols))


def _write_latest(fs: fsspec.AbstractFileSystem, model_dir: str, version: str) -> None:
    pointer = _join(model_dir, LATEST_FILE)
    # A temporary name per writer: with one shared name two concurrent exports moved each
    # other's file away (FileNotFoundError in the second mv).
    tmp = f"{pointer}.{uuid.uuid4().hex}.tmp"
    _write_bytes(fs, tmp, (version + "\n").encode())
    fs.mv(tmp, pointer)  # a rename on local disks: readers see the old or the new pointer


def _integrity(fs: fsspec.AbstractFileSystem, version_dir: str) -> str:
    """ "ok" when load_artifact would accept the version (reads model.pt), else its reason."""
    try:
        load_artifact(fs.unstrip_protocol(version_dir))
    except ArtifactError as e:
        return str(e).split(". ")[0]
    except Exception as e:  # a listing must not fail on one unreadable version
        return f"unreadable: {e}"
    return "ok"


def list_versions(store_uri: str) -> list[dict[str, Any]]:
    """Every artifact in the store, newest first per model, for ``python -m train_job.models list``.

    Each row's ``integrity`` is "ok" or why load_artifact refuses that version (digest
    mismatch, old format_version, ...); computing it reads every model.pt once."""
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
                    # Macro test F1 with the per-label tuned thresholds / the single one.
                    "test_f1_tuned": meta.get("metrics", {}).get("test_f1_tuned"),
                    "test_f1_single": meta.get("metrics", {}).get("test_f1_single"),
                    "test_accuracy_tuned": meta.get("metrics", {}).get("test_accuracy_tuned"),
                    "test_accuracy_single": meta.get("metrics", {}).get("test_accuracy_single"),
                    "size_bytes": size,
                    "created_at": meta.get("created_at"),
                    "path": version_dir,
                    "integrity": _integrity(fs, version_dir),
                }
            )
    return rows
