"""The driver: resolve the artifact once, list the inputs, build the Ray Data pipeline, write the
Parquet, then read back what was written to check it and summarise it.

    from_items([{input_index, path}])                      (N rows, on the driver's node)
      -> map_batches(decode_batch)          tasks          (N, 3, H, W) uint8 + error
         or map_batches(FaceFinder)         actor pool     (M faces, 3, H, W) + box, landmarks
      -> map_batches(Predictor)             actor pool     (N or M rows) probabilities, labels
      -> write_parquet(--output)                           files of --rows-per-file rows

The version is pinned before anything starts: ``<store>/<name>/latest`` is resolved to its
version directory on the driver and every actor loads exactly that one, so a model exported
while the job runs does not mix two versions in one output.
"""

from __future__ import annotations

import json
import math
import posixpath
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset
import pyarrow.fs
from fsspec.implementations.arrow import ArrowFSWrapper

from batch_job.config import BatchConfig
from batch_job.inputs import InputError, list_inputs
from batch_job.stages import FaceFinder, Predictor, decode_batch
from model_store import DetectorMetadata, load_artifact
from model_store.store import filesystem
from serve_app.common.protocol import PreprocessSpec

SUMMARY_FILE = "_summary.json"  # a leading "_": Parquet readers skip it in the folder


class JobError(RuntimeError):
    """The job cannot start (no inputs, an output in the way) or its output is not complete."""


@dataclass
class Summary:
    model: dict[str, str]
    inputs: int
    rows: int
    images_ok: int
    errors: dict[str, int]  # error code -> images
    positives: dict[str, int]  # label -> rows at or above its threshold
    seconds: float  # pipeline: first read to last file written
    images_per_s: float
    missing_inputs: int  # inputs with no row in the output (must be 0)
    duplicate_rows: int  # rows beyond one per input (per face with --faces) (must be 0)
    faces: int | None = None  # --faces: face rows
    detector: dict[str, str] | None = None
    left_out: str = ""
    output: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def arrow_filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The store's filesystem for ``uri`` as the pyarrow filesystem Ray Data writes with."""
    fs, path = filesystem(uri)
    if isinstance(fs, ArrowFSWrapper):
        return fs.fs, path
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def prepare_output(uri: str, overwrite: bool) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path) and fs.ls(path, detail=False):
        if not overwrite:
            raise JobError(
                f"--output {uri} exists and is not empty: name a new folder, or --overwrite "
                "to delete what is there first (rows of two runs must not mix)"
            )
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def default_detector_uri(version_uri: str) -> str:
    """``<store>/<name>/<version>`` -> ``<store>/face-detector/latest``."""
    store = posixpath.dirname(posixpath.dirname(version_uri.rstrip("/")))
    return posixpath.join(store, "face-detector", "latest")


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def pool_sizes(cfg: BatchConfig, num_gpus: float, other_cpus: float) -> tuple[int, int]:
    """(min, max) model actors. What the cluster holds now: one actor per GPU share; without
    GPUs, as many as its CPUs hold beside ``other_cpus`` (a decode task's, or the face
    detector actors'). Both default to it: the pool starts full, because Ray Data grows a
    pool only while work queues, and a pool started at one actor stayed at one on 2 cores
    (4,500 images: 296-328 img/s against 447-454 with both actors from the start,
    mobilenet_v3_small). A --max-actors above it lets the pool grow onto nodes the
    autoscaler adds."""
    import ray

    if num_gpus > 0:
        fits = int(cluster_gpus() // num_gpus)
    else:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        fits = int((cpus - other_cpus) // cfg.actor_cpus)
    most = cfg.max_actors or max(fits, 1)
    least = cfg.min_actors if cfg.min_actors is not None else max(1, min(fits, most))
    return least, max(least, most)


def decode_in_actor(cfg: BatchConfig, num_gpus: float) -> bool:
    """Where images are decoded. In the model actor on CPU: Ray Data fuses a task stage into
    the actor stage after it when both ask for the same resources, so the pixels never cross
    the object store and no CPU waits for the other stage (measured on 2 cores,
    bench/results/batch.md). With GPUs in tasks: the GPU actor's few CPUs would decode in
    series with its forward passes, while the nodes' other CPUs stood idle."""
    if cfg.decode_on == "auto":
        return num_gpus == 0
    return cfg.decode_on == "actor"


def check_room_to_decode(cfg: BatchConfig, min_actors: int) -> None:
    """CPU actors with decode tasks beside them: the actors keep their CPUs for the whole run,
    and a decode task that finds none left waits forever (a 2-CPU Ray with one 2-CPU actor
    hung so). Refuse instead."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0))
    if min_actors * cfg.actor_cpus + cfg.decode_cpus > cpus:
        raise JobError(
            f"--decode-on tasks: {min_actors} model actors x {cfg.actor_cpus} CPUs leave no "
            f"{cfg.decode_cpus} CPU for a decode task on this cluster ({cpus:g} CPUs); lower "
            "--actor-cpus or --min-actors, or decode in the actors (--decode-on actor)"
        )


def run(cfg: BatchConfig) -> Summary:
    """Run the job on the Ray this process is connected to (ray.init() first when it is not)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init()
    artifact = load_artifact(cfg.model_uri, trusted_public_key=cfg.trusted_public_key)
    meta, version_uri = artifact.metadata, artifact.uri
    spec = PreprocessSpec.of(meta)
    detector_meta = None
    if cfg.faces:
        detector_uri = cfg.detector_uri or default_detector_uri(version_uri)
        detector = load_artifact(detector_uri, cfg.trusted_public_key, schema=DetectorMetadata)
        detector_meta, detector_uri = detector.metadata, detector.uri
    try:
        inputs = list_inputs(cfg.inputs, cfg.extensions)
    except InputError as e:
        raise JobError(str(e)) from e
    if not inputs.paths:
        raise JobError(f"no images in {cfg.inputs}. {inputs.describe_left_out()}".strip())
    prepare_output(cfg.output, cfg.overwrite)

    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (
        1.0 if cfg.device != "cpu" and cluster_gpus() >= 1 else 0.0
    )  # fmt: skip
    in_actor = cfg.faces or decode_in_actor(cfg, num_gpus)
    other_cpus = (
        cfg.max_detector_actors * cfg.actor_cpus if cfg.faces
        else 0.0 if in_actor
        else cfg.decode_cpus
    )  # fmt: skip
    min_actors, max_actors = pool_sizes(cfg, num_gpus, other_cpus)
    n = len(inputs.paths)
    items = [{"input_index": i, "path": p} for i, p in enumerate(inputs.paths)]
    # One block per batch: the first stage runs as many tasks as there are free CPUs.
    blocks = max(1, min(math.ceil(n / cfg.batch_size), 100_000))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    if cfg.faces:
        ds = ds.map_batches(
            FaceFinder,
            fn_constructor_kwargs={
                "detector_uri": detector_uri,
                "spec": spec,
                "device": cfg.detector_device,
                "max_pixels": cfg.max_image_pixels,
                "detect_side": cfg.detect_side,
                "min_face_px": cfg.min_face_px,
                "max_faces": cfg.max_faces,
            },
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.max_detector_actors),
            num_cpus=cfg.actor_cpus,
        )
    else:
        if not in_actor and num_gpus == 0:
            check_room_to_decode(cfg, min_actors)
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"spec": spec, "max_pixels": cfg.max_image_pixels},
            batch_size=cfg.batch_size,
            # The actor's own resources: Ray Data fuses this stage into the actor's.
            num_cpus=cfg.actor_cpus if in_actor else cfg.decode_cpus,
            num_gpus=num_gpus if in_actor else 0,
        )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "model_uri": version_uri,
            "spec": spec,
            "device": cfg.device,
            "precision": cfg.precision,
            "max_batch_size": cfg.forward_batch_size,
            "faces": cfg.faces,
        },
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_cpus=cfg.actor_cpus,
        num_gpus=num_gpus,
    )
    out_fs, out_path = arrow_filesystem(cfg.output)
    started = time.perf_counter()
    ds.write_parquet(
        out_path,
        filesystem=out_fs,
        # Without it each block is a file: 8,000 images in batches of 16 made 500 small files.
        min_rows_per_file=cfg.rows_per_file,
    )
    seconds = time.perf_counter() - started

    summary = summarise(cfg, meta, n, seconds, detector_meta)
    summary.left_out = inputs.describe_left_out()
    summary.settings = {
        "device": cfg.device, "precision": cfg.precision, "num_gpus_per_actor": num_gpus,
        "actor_cpus": cfg.actor_cpus, "actors": [min_actors, max_actors],
        "decode_on": "actor" if in_actor else "tasks",
        "batch_size": cfg.batch_size, "forward_batch_size": cfg.forward_batch_size,
    }  # fmt: skip
    fs, path = filesystem(cfg.output)
    with fs.open(posixpath.join(path, SUMMARY_FILE), "wb") as f:
        f.write(json.dumps(asdict(summary), indent=2).encode())
    return summary


def summarise(cfg: BatchConfig, meta, inputs: int, seconds: float, detector_meta=None) -> Summary:
    """Read back the columns the summary needs from what was written (one column pass, not
    the probabilities): counts, errors, positives per label, and the exactly-once check."""
    import pyarrow.compute as pc

    out_fs, out_path = arrow_filesystem(cfg.output)
    columns = ["input_index", "error", "labels"] + (["face"] if cfg.faces else [])
    table = pyarrow.dataset.dataset(out_path, filesystem=out_fs, format="parquet").to_table(
        columns=columns
    )
    index = table["input_index"]
    if cfg.faces:  # a row per face, or one row for an image without any: unique per pair
        face = pc.fill_null(table["face"], -1)
        keys = pc.add(pc.multiply(pc.cast(index, pa.int64()), 1 << 16), pc.cast(face, pa.int64()))
        duplicates = len(keys) - pc.count_distinct(keys).as_py()
    else:
        duplicates = len(index) - pc.count_distinct(index).as_py()
    seen = pc.unique(index)
    in_range = pc.sum(pc.and_(pc.greater_equal(seen, 0), pc.less(seen, inputs))).as_py() or 0
    errors_per_image: dict[int, str] = {}
    error_rows = table.filter(pc.is_valid(table["error"]))
    for i, code in zip(error_rows["input_index"].to_pylist(), error_rows["error"].to_pylist()):
        errors_per_image[i] = code
    errors: dict[str, int] = {}
    for code in errors_per_image.values():
        errors[code] = errors.get(code, 0) + 1
    positives = {label: 0 for label in meta.labels}
    flat = pc.list_flatten(table["labels"])
    if len(flat):
        for entry in pc.value_counts(flat).to_pylist():
            positives[entry["values"]] = entry["counts"]
    return Summary(
        model={"name": meta.name, "version": meta.version},
        inputs=inputs,
        rows=table.num_rows,
        images_ok=inputs - len(errors_per_image),
        errors=dict(sorted(errors.items())),
        positives=positives,
        seconds=round(seconds, 3),
        images_per_s=round(inputs / seconds, 1) if seconds > 0 else 0.0,
        missing_inputs=inputs - in_range,
        duplicate_rows=duplicates,
        faces=(pc.sum(pc.is_valid(table["face"])).as_py() or 0) if cfg.faces else None,
        detector=(
            {"name": detector_meta.name, "version": detector_meta.version}
            if detector_meta is not None
            else None
        ),
        output=cfg.output,
    )


def print_summary(s: Summary, out=sys.stdout) -> None:
    lines = [
        f"Model {s.model['name']} {s.model['version']}: {s.inputs:,} images in "
        f"{s.seconds:.1f} s = {s.images_per_s:,.1f} images/s -> {s.output}",
        f"  {s.images_ok:,} predicted, {sum(s.errors.values()):,} errors"
        + (f" ({', '.join(f'{k} x{v}' for k, v in s.errors.items())})" if s.errors else ""),
    ]
    if s.faces is not None and s.detector:
        lines.append(f"  {s.faces:,} faces (detector {s.detector['version']}), {s.rows:,} rows")
    if s.left_out:
        lines.append(f"  {s.left_out}")
    lines.append(
        f"  every input written exactly once: {s.missing_inputs == 0 and s.duplicate_rows == 0}"
        f" (missing {s.missing_inputs}, duplicate rows {s.duplicate_rows})"
    )
    ranked = sorted(s.positives.items(), key=lambda kv: (-kv[1], kv[0]))
    unit = "faces" if s.faces is not None else "images"
    lines.append(f"  {unit} per label at or above its threshold:")
    width = max((len(k) for k in s.positives), default=0)
    lines += [f"    {label:<{width}}  {count:>9,}" for label, count in ranked]
    print("\n".join(lines), file=out, flush=True)
