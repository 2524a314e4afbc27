"""The model artifact: the only contract between training (train_job) and serving (serve_app).

An artifact is a frozen TorchScript file plus ``metadata.json`` in a versioned store::

    <store>/<name>/<version>/model.pt
    <store>/<name>/<version>/metadata.json
    <store>/<name>/latest            # a one-line text file naming the newest version

``<store>`` is a local path or any URI that fsspec or pyarrow can open (s3://, gs://, ...).
"""

from model_store.metadata import FORMAT, ArtifactMetadata
from model_store.preprocess import resize_for_model
from model_store.store import (
    ArtifactError,
    LoadedArtifact,
    list_versions,
    load_artifact,
    resolve_model_uri,
    save_artifact,
)
from model_store.torchscript import export_frozen_torchscript

__all__ = [
    "FORMAT",
    "ArtifactError",
    "ArtifactMetadata",
    "LoadedArtifact",
    "export_frozen_torchscript",
    "list_versions",
    "load_artifact",
    "resize_for_model",
    "resolve_model_uri",
    "save_artifact",
]
