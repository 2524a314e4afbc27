"""``python -m batch_job`` options. Defaults that serving also has (pixel limit, face detection)
are read from serving's own config models, so the two cannot drift apart."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from batch_job.inputs import IMAGE_EXTENSIONS
from serve_app.api.schema import FacesQuery
from serve_app.config import AppArgs, ModelConfig


def _default(model, name: str):
    return model.model_fields[name].default


@dataclass(frozen=True)
class BatchConfig:
    model_uri: str
    inputs: list[str]
    output: str
    overwrite: bool = False
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    device: str = "auto"
    precision: str = "float32"
    num_gpus: float | None = None  # per model actor; None: 1 when the cluster has GPUs
    actor_cpus: float = 1.0
    min_actors: int | None = None  # None: batch_job.job.pool_sizes
    max_actors: int | None = None  # None: batch_job.job.pool_sizes
    decode_on: str = "auto"  # actor | tasks | auto: tasks with GPUs, the actor without
    decode_cpus: float = 1.0  # per decode task (decode_on: tasks)
    batch_size: int = 64
    rows_per_file: int | None = 10_000  # at least, per Parquet file
    forward_batch_size: int | None = None  # None: serving's max_batch_size on CPU, else batch_size
    max_image_pixels: int = _default(AppArgs, "max_image_pixels")
    trusted_public_key: str | None = None
    faces: bool = False
    detector_uri: str | None = None  # None: <store>/face-detector/latest beside the model
    detector_device: str = "cpu"
    max_detector_actors: int = 1
    max_faces: int = _default(AppArgs, "max_faces")
    min_face_px: int = _default(FacesQuery, "min_face_px")
    detect_side: int = _default(AppArgs, "faces_detect_side")


def build_parser() -> argparse.ArgumentParser:
    d = BatchConfig("", [], "")
    p = argparse.ArgumentParser(
        prog="python -m batch_job",
        description="Label a collection of images with a model artifact on Ray Data: "
        "read, decode as serving does, predict in an actor pool, write Parquet.",
    )
    p.add_argument("--model-uri", required=True,
                   help="<store>/<name>/latest or <store>/<name>/<version>: a path or a URI "
                   "(s3://, gs://); latest is resolved once, when the job starts")  # fmt: skip
    p.add_argument("--input", required=True, action="extend", nargs="+", dest="inputs",
                   help="a folder (its images, recursively), a list file (.txt/.lst/.list: a "
                   "path or URI a line) or one image; local or a URI; repeatable")  # fmt: skip
    p.add_argument("--output", required=True, help="folder for the Parquet files (path or URI)")
    p.add_argument("--overwrite", action="store_true", help="delete --output's contents first")
    p.add_argument("--extensions", default=",".join(d.extensions),
                   help="file endings a folder contributes; '*' for every file (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default=d.precision)
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per model actor (a fraction shares one); default: 1 when the "
                   "cluster has GPUs and --device is not cpu, else 0")  # fmt: skip
    p.add_argument("--actor-cpus", type=float, default=d.actor_cpus,
                   help="CPUs per model actor; its torch threads (default %(default)s)")  # fmt: skip
    p.add_argument("--min-actors", type=int, default=None,
                   help="model actors from the start (default: as many as the cluster holds "
                   "now, at most --max-actors)")  # fmt: skip
    p.add_argument("--max-actors", type=int, default=None,
                   help="model actors at most; above --min-actors the pool grows while work "
                   "queues, onto nodes the autoscaler adds (default: as many as the cluster "
                   "holds now: one per GPU share; without GPUs, as many as its CPUs hold)")  # fmt: skip
    p.add_argument("--decode-on", choices=("auto", "actor", "tasks"), default=d.decode_on,
                   help="actor: each model actor decodes its own images; tasks: Ray Data "
                   "tasks decode on any node's CPUs and pixels travel to the actors; auto "
                   "(default): tasks when the model actors have GPUs, else actor")  # fmt: skip
    p.add_argument("--decode-cpus", type=float, default=d.decode_cpus,
                   help="CPUs per decode task with --decode-on tasks (default %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="images per Ray Data batch: per decode call and model actor call "
                   "(default %(default)s)")  # fmt: skip
    p.add_argument("--forward-batch-size", type=int, default=None,
                   help="images per forward pass (default: on CPU serving's max_batch_size, "
                   f"{_default(ModelConfig, 'max_batch_size')}; on a GPU --batch-size)")  # fmt: skip
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file,
                   help="rows per Parquet file, at least (the last file may hold fewer; "
                   "default %(default)s)")  # fmt: skip
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels,
                   help="width*height above which an image is refused (serving's default)")  # fmt: skip
    p.add_argument("--trusted-public-key", default=None,
                   help="PEM public key: refuse an artifact it did not sign")  # fmt: skip
    faces = p.add_argument_group("faces", "--faces: a row per detected face")
    faces.add_argument("--faces", action="store_true",
                       help="detect and align faces (as POST /faces) and label each")  # fmt: skip
    faces.add_argument("--detector-uri", default=None,
                       help="face detector artifact (default: <store>/face-detector/latest)")  # fmt: skip
    faces.add_argument("--detector-device", choices=("auto", "cpu", "cuda"), default="cpu")
    faces.add_argument("--max-detector-actors", type=int, default=d.max_detector_actors)
    faces.add_argument("--max-faces", type=int, default=d.max_faces)
    faces.add_argument("--min-face-px", type=int, default=d.min_face_px)
    faces.add_argument("--detect-side", type=int, default=d.detect_side)
    return p


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    extensions = tuple(
        e if e == "*" or e.startswith(".") else "." + e
        for e in (x.strip().lower() for x in args.extensions.split(","))
        if e
    )
    return BatchConfig(
        model_uri=args.model_uri,
        inputs=list(args.inputs),
        output=args.output,
        overwrite=args.overwrite,
        extensions=extensions,
        device=args.device,
        precision=args.precision,
        num_gpus=args.num_gpus,
        actor_cpus=args.actor_cpus,
        min_actors=args.min_actors,
        max_actors=args.max_actors,
        decode_on=args.decode_on,
        decode_cpus=args.decode_cpus,
        batch_size=args.batch_size,
        forward_batch_size=args.forward_batch_size,
        rows_per_file=args.rows_per_file,
        max_image_pixels=args.max_image_pixels,
        trusted_public_key=args.trusted_public_key,
        faces=args.faces,
        detector_uri=args.detector_uri,
        detector_device=args.detector_device,
        max_detector_actors=args.max_detector_actors,
        max_faces=args.max_faces,
        min_face_px=args.min_face_px,
        detect_side=args.detect_side,
    )
