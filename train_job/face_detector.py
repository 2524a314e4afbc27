"""Put a face detector into the model store: MTCNN's three networks as one artifact.

    python -m train_job.face_detector --model-store models [--version V] [--signing-key KEY]

The weights come from the facenet-pytorch package (MIT licence; the MTCNN weights of Zhang et
al., 2016, as converted by davidsandberg/facenet), which ships them inside its wheel: nothing
is downloaded. They are scripted into one TorchScript module whose submodules ``pnet``,
``rnet`` and ``onet`` are the cascade's stages, and saved with a digest (and a signature, with
``--signing-key``) like every classifier, under ``<store>/face-detector/<version>``. Serving
loads and checks it like a classifier (serve_app/detector/); the cascade around the networks
(pyramid, boxes, non-maximum suppression) is the package's own ``detect_face``.

Why MTCNN (measured here, tests/test_faces.py and docs/faces.md): its weights install from
the registry, it gives the five landmarks alignment needs, it finds the scikit-image astronaut
at p > 0.999 and CelebA-sized faces down to ~20 px, ~2.5 MB of weights, MIT.
"""

from __future__ import annotations

import argparse
import io
import sys

import torch
from torch import nn

from model_store import DetectorMetadata, save_artifact

NAME = "face-detector"
SOURCE = (
    "facenet-pytorch {version} (MIT): MTCNN (Zhang et al., 2016) weights as converted by "
    "davidsandberg/facenet"
)


class Cascade(nn.Module):
    """The three stages as submodules; ``forward`` is the proposal network (a module needs one)."""

    def __init__(self, pnet: nn.Module, rnet: nn.Module, onet: nn.Module):
        super().__init__()
        self.pnet, self.rnet, self.onet = pnet, rnet, onet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pnet(x)


def scripted_cascade() -> bytes:
    """MTCNN's pretrained networks (loaded from the installed package) as TorchScript bytes."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    cascade = Cascade(PNet(), RNet(), ONet()).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(cascade), buffer)
    return buffer.getvalue()


def export(store: str, version: str | None = None, signing_key: str | None = None):
    from importlib.metadata import version as package_version

    metadata = {"source": SOURCE.format(version=package_version("facenet-pytorch"))}
    return save_artifact(
        store,
        NAME,
        scripted_cascade(),
        metadata,
        version=version,
        signing_key=signing_key,
        schema=DetectorMetadata,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train_job.face_detector", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-store", required=True, help="store path or URI")
    parser.add_argument("--version", default=None, help="default: the time, as training names")
    parser.add_argument("--signing-key", default=None, help="ed25519 private key (PEM) to sign")
    args = parser.parse_args(argv)
    artifact = export(args.model_store, args.version, args.signing_key)
    print(f"face detector {artifact.metadata.version} -> {artifact.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
