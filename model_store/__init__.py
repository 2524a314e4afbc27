"""The model artifact: the only contract between training (train_job) and serving (serve_app).

An artifact (format_version 2) is a traced TorchScript file plus ``metadata.json`` in a
versioned store::

    <store>/<name>/<version>/model.pt        # traced, NOT frozen: weights are parameters
    <store>/<name>/<version>/metadata.json   # preprocessing, labels, sha256, digest, signature
    <store>/<name>/latest                    # a one-line text file naming the newest version

``<store>`` is a local path or any URI that fsspec or pyarrow can open (s3://, gs://, ...).
On object stores a version directory also holds ``.claimed``, the marker that reserved it.

metadata.json carries:

- ``sha256``: of model.pt's bytes;
- ``digest``: sha256 over model.pt's sha256 and the canonical JSON (sorted keys, no whitespace,
  UTF-8) of every metadata field except ``digest`` and ``signature`` (model_store.integrity).
  load_artifact refuses any mismatch, so an edited label order, threshold, mean/std or
  input_size is refused instead of served;
- ``signature`` (optional): ``{"algorithm": "ed25519", "public_key_sha256": <hex sha256 of the
  raw public key>, "value": <base64 signature of b"face-attributes-artifact-digest/2:" +
  digest>}``, written when training is given ``--signing-key``, required and checked when
  load_artifact is given ``trusted_public_key`` (keys: ``python -m model_store.keys generate``).

Serving turns an artifact into a runnable module with ``load_torchscript(artifact, device,
dtype)``: cast to float32/float16/bfloat16 first, then frozen.
"""

from model_store.metadata import (
    CELEBA_TEMPLATE,
    DETECTOR_FORMAT,
    FORMAT,
    FORMAT_VERSION,
    LANDMARKS,
    ArtifactMetadata,
    ArtifactSignature,
    DetectorMetadata,
    FaceTemplate,
)
from model_store.preprocess import resize_for_model
from model_store.store import (
    ArtifactError,
    LoadedArtifact,
    list_versions,
    load_artifact,
    resolve_model_uri,
    save_artifact,
)
from model_store.torchscript import export_frozen_torchscript, export_torchscript, load_torchscript

__all__ = [
    "CELEBA_TEMPLATE",
    "DETECTOR_FORMAT",
    "FORMAT",
    "FORMAT_VERSION",
    "LANDMARKS",
    "ArtifactError",
    "ArtifactMetadata",
    "ArtifactSignature",
    "DetectorMetadata",
    "FaceTemplate",
    "LoadedArtifact",
    "export_frozen_torchscript",
    "export_torchscript",
    "list_versions",
    "load_artifact",
    "load_torchscript",
    "resize_for_model",
    "resolve_model_uri",
    "save_artifact",
]
