"""Application builder: ``serve run config.yaml`` (import_path ``serve_app.app:build_app``).

Serve validates the ``args:`` mapping against AppArgs at deploy time, so a typo in config.yaml
fails the deploy with the offending key instead of starting a misconfigured service.

Five deployments: the Ingress; FaceAttributeModel (the stable version); CandidateModel (the same
class, no replica until a rollout gives it an artifact: serve_app/rollout); RolloutMonitor (holds
the rollout settings, sums the ingress replicas' counts); FaceDetector (the faces of POST /faces).
"""

import uuid

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.detector.deployment import FaceDetector
from serve_app.ingress.deployment import Ingress
from serve_app.model.deployment import FaceAttributeModel
from serve_app.rollout.config import CANDIDATE_DEPLOYMENT
from serve_app.rollout.monitor import RolloutMonitor

# Without a rollout the candidate has no replica (config.yaml's CandidateModel entry says the
# same; the rollout raises min_replicas to 1 while it runs).
NO_CANDIDATE_SCALING = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}


def build_app(args: AppArgs) -> Application:
    """Serve calls this once per build of the application (a new application, or a change of
    its args): ``deploy_id`` names that deploy, and the model deployments pin the version their
    ``model_uri`` resolves to under it (serve_app/common/pin.py)."""
    deploy_id = uuid.uuid4().hex[:16]
    model_args = dict(
        deploy_id=deploy_id,
        device=args.device,
        precision=args.precision,
        torch_threads=args.torch_threads,
        max_image_pixels=args.max_image_pixels,
    )
    stable = FaceAttributeModel.bind(**model_args)
    candidate = FaceAttributeModel.options(
        name=CANDIDATE_DEPLOYMENT, autoscaling_config=NO_CANDIDATE_SCALING
    ).bind(**model_args)
    detector = FaceDetector.bind(
        device=args.detector_device, torch_threads=None, deploy_id=deploy_id
    )
    return Ingress.bind(
        model=stable,
        args=args.model_dump(),
        candidate=candidate,
        monitor=RolloutMonitor.bind(),
        detector=detector,
    )


# `serve run serve_app.app:app` with every default (model_uri models/face-attributes/latest).
app = build_app(AppArgs())
