"""Application builder: ``serve run config.yaml`` (import_path ``serve_app.app:build_app``).

Serve validates the ``args:`` mapping against AppArgs at deploy time, so a typo in config.yaml
fails the deploy with the offending key instead of starting a misconfigured service.
"""

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.face_attribute_model import FaceAttributeModel
from serve_app.ingress import Ingress


def build_app(args: AppArgs) -> Application:
    model = FaceAttributeModel.bind(
        device=args.device,
        precision=args.precision,
        torch_threads=args.torch_threads,
        max_image_pixels=args.max_image_pixels,
    )
    return Ingress.bind(model, args.model_dump())


# `serve run serve_app.app:app` with every default (model_uri models/face-attributes/latest).
app = build_app(AppArgs())
