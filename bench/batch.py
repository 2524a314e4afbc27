"""The batch job's speed on this machine: `python -m bench.batch` (issue 26).

For each backbone (bench_artifact: random weights, 224x224, exported as training exports):

- the model-only limit (bench.model_limit: the artifact called directly, uint8 batches, the
  best of 1 and 2 torch threads and batch 1..64), the decode limit
  and the decode+model pipeline limit on this box (bench.run: both share its cores);
- ``python -m batch_job`` over a folder of copies of the CelebA-sized JPEG the serving
  benchmark sends, with its own local Ray (RAY_ADDRESS=local: a Ray of this machine's CPUs,
  as a user's first run gets), in each actor layout compared (``LAYOUTS``). A run's time is
  the job's own pipeline time (_summary.json ``seconds``: the write call, actor start and
  model load included); the steady rate is the marginal one between a small and a large run,
  (n_large - n_small) / (t_large - t_small), which cancels the start-up both pay;
- the HTTP path at saturation: ``serve run`` of config.yaml as shipped (bench.run.serving) under
  bench.loadgen at concurrency 32 and 64, the best req/s.

Writes bench/results/TAG.json and TAG.md (TAG: --tag, default ``batch``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.artifacts import bench_artifact
from bench.run import (
    decode_limit,
    load,
    pipeline_limit,
    serving,
    shipped_env,
    test_images,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

# Actor layouts on this 2-core box: (name, extra batch_job flags). "default" is the job's own
# choice with no flag (decode in the actors, as many 1-CPU actors as there are CPUs).
LAYOUTS = {
    "default": [],
    "1 actor x 2 threads": ["--actor-cpus", "2"],
    "1 actor x 1 thread": ["--max-actors", "1"],
    "decode tasks + 1 actor x 1 thread": ["--max-actors", "1", "--decode-on", "tasks"],
}
# Images per run: the large run 3-4x the small one, each long enough that start-up
# (~4 s: actors, model load) is a minor part of the large one.
SIZES = {"mobilenet_v3_small": (1500, 4500), "resnet34": (300, 1200)}


def model_rows(model_uri: str) -> list[dict]:
    """bench.model_limit at 1 and 2 threads, batch 1..64 (64: the job's default Ray Data
    batch, to show why forward passes stay at serving's 16 on CPU)."""
    out = subprocess.run(
        [PY, "-m", "bench.model_limit", "--model-uri", model_uri, "--threads", "1", "2",
         "--batch-sizes", "1", "2", "4", "8", "16", "32", "64"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def image_folder(workdir: Path, image: Path, n: int) -> Path:
    """n copies of one JPEG (hard links: the files are read, so the page cache serves them)."""
    folder = workdir / f"images-{n}"
    if not folder.exists():
        folder.mkdir()
        for i in range(n):
            os.link(image, folder / f"{i:06d}.jpg")
    return folder


def run_job(model_uri: str, folder: Path, out: Path, flags: list[str]) -> dict:
    cmd = [PY, "-m", "batch_job", "--model-uri", model_uri, "--input", str(folder),
           "--output", str(out), "--overwrite", *flags]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "RAY_ADDRESS": "local"},
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "_summary.json").read_text())
    return {
        "images": summary["inputs"],
        "pipeline_s": summary["seconds"],
        "images_per_s": summary["images_per_s"],
        "wall_s": round(wall, 1),  # the command: Python and Ray start, listing, summary
        "settings": summary["settings"],
    }


def measure_job(model_uri: str, workdir: Path, image: Path, sizes: tuple[int, int]) -> dict:
    rows = {}
    for name, flags in LAYOUTS.items():
        small, large = (
            run_job(model_uri, image_folder(workdir, image, n), workdir / "out", flags)
            for n in sizes
        )
        marginal = (large["images"] - small["images"]) / (large["pipeline_s"] - small["pipeline_s"])
        rows[name] = {
            "flags": flags,
            "small": small,
            "large": large,
            "steady_images_per_s": round(marginal, 1),
        }
        print(f"    {name:<36} {large['images_per_s']:>7} img/s end to end ({large['images']} "
              f"images), steady {marginal:.1f} img/s", flush=True)  # fmt: skip
    return rows


def measure_http(model_uri: str, image: Path, levels: list[int], seconds: float) -> list[dict]:
    with serving(model_uri, {}, shipped_env()) as (proc, port):
        return load(f"http://127.0.0.1:{port}/classify", image, levels, seconds, proc.pid)


def markdown(results: dict) -> str:
    lines = [
        f"# Batch job throughput ({results['date']})\n",
        f"{results['machine']}. `python -m bench.batch`; the job with its own local Ray "
        "(`RAY_ADDRESS=local`), inputs: copies of the 178x218 CelebA-sized JPEG the serving "
        "benchmark sends, model input 224x224, float32 on CPU. Steady: the marginal rate "
        "between a small and a large run (start-up cancels); end to end: the large run's "
        "images over its pipeline time (actor start and model load included).\n",
    ]
    for name, entry in results["models"].items():
        limits = entry["limits"]
        http = entry["http_saturated_rps"]
        lines += [
            f"\n## {name}\n",
            f"Model-only limit **{limits['model']} img/s** (batch {limits['model_batch']}, "
            f"{limits['model_threads']} threads); decode limit {limits['decode']} img/s; "
            f"decode+model pipeline limit **{limits['pipeline']} img/s**; HTTP path "
            f"(`serve run config.yaml`, /classify) at saturation **{http} req/s** "
            f"(best of c = {', '.join(str(r['concurrency']) for r in entry['http'])}).\n",
            "| layout | flags | steady img/s | / model-only | / pipeline | / HTTP | end to end img/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for layout, row in entry["job"].items():
            steady = row["steady_images_per_s"]
            lines.append(
                f"| {layout} | `{' '.join(row['flags']) or '(none)'}` | {steady} | "
                f"{steady / limits['model']:.2f}x | {steady / limits['pipeline']:.2f}x | "
                f"{steady / http:.2f}x | {row['large']['images_per_s']} |"
            )
        sizes = [r["batch"] for r in entry["model_limit"][0]["rows"]]
        lines += [
            "\nModel-only img/s by batch size (bench.model_limit):\n",
            "| threads | " + " | ".join(f"batch {b}" for b in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        lines += [
            f"| {t['threads']} | " + " | ".join(str(r["images_per_s"]) for r in t["rows"]) + " |"
            for t in entry["model_limit"]
        ]
        best = max(entry["job"].items(), key=lambda kv: kv[1]["steady_images_per_s"])
        default = entry["job"]["default"]["steady_images_per_s"]
        lines.append(
            f"\nTarget >= 0.8x the model-only limit: default {default / limits['model']:.2f}x "
            f"-> {'met' if default >= 0.8 * limits['model'] else 'not met'}; best layout "
            f"({best[0]}) {best[1]['steady_images_per_s'] / limits['model']:.2f}x.\n"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=list(SIZES))
    parser.add_argument("--tag", default="batch")
    parser.add_argument("--http-levels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--http-seconds", type=float, default=15.0)
    args = parser.parse_args()
    results: dict = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        workdir = Path(tmp)
        image = test_images(workdir)["celeba"]
        decode = decode_limit(image)
        for backbone in args.backbones:
            print(f"{backbone}:", flush=True)
            uri = bench_artifact(backbone)
            threads = model_rows(uri)
            best_threads = max(threads, key=lambda t: t["best"]["images_per_s"])
            best = best_threads["best"]
            limits = {
                "model": best["images_per_s"],
                "model_batch": best["batch"],
                "model_threads": best_threads["threads"],
                "decode": decode,
                "pipeline": pipeline_limit(best["images_per_s"], decode),
            }
            print(f"  limits: {limits}", flush=True)
            job = measure_job(uri, workdir, image, SIZES.get(backbone, (500, 1500)))
            http = measure_http(uri, image, args.http_levels, args.http_seconds)
            results["models"][backbone] = {
                "model_uri": uri,
                "limits": limits,
                "model_limit": threads,
                "job": job,
                "http": http,
                "http_saturated_rps": max(r["throughput_rps"] for r in http),
            }
            shutil.rmtree(workdir / "out", ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (RESULTS / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
