"""Application builder: ``serve run config.yaml`` (import_path ``serve_app.app:build_app``).

Serve validates the ``args:`` mapping against AppArgs at deploy time, so a typo in config.yaml
fails the deploy with the offending key instead of starting a misconfigured service.

Four deployments: the Ingress; FaceAttributeModel (the stable version); CandidateModel (the same
class, no replica until a rollout gives it an artifact: serve_app/rollout); RolloutMonitor (sums
the ingress replicas' rollout counts).
"""

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.face_attribute_model import FaceAttributeModel
from serve_app.ingress import Ingress
from serve_app.rollout.config import CANDIDATE_DEPLOYMENT
from serve_app.rollout.monitor import RolloutMonitor

# Without a rollout the candidate has no replica (config.yaml's CandidateModel entry says the
# same; the rollout raises min_replicas to 1 while it runs).
NO_CANDIDATE_SCALING = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}


def build_app(args: AppArgs) -> Application:
    model_args = dict(
        device=args.device,
        precision=args.precision,
        torch_threads=args.torch_threads,
        max_image_pixels=args.max_image_pixels,
    )
    stable = FaceAttributeModel.bind(**model_args)
    candidate = FaceAttributeModel.options(
        name=CANDIDATE_DEPLOYMENT, autoscaling_config=NO_CANDIDATE_SCALING
    ).bind(**model_args)
    return Ingress.bind(
        model=stable, args=args.model_dump(), candidate=candidate, monitor=RolloutMonitor.bind()
    )


# `serve run serve_app.app:app` with every default (model_uri models/face-attributes/latest).
app = build_app(AppArgs())
