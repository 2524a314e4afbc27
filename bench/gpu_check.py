"""`make gpu-check` (python -m bench.gpu_check): one command that measures the GPU path.

Sections (each in the JSON, each recorded as failed rather than aborting the others):

1. model_only: per backbone, in a subprocess (bench/model_variants.py): the served artifact
   (serve_app.inference.load_model + forward) in each precision at each batch size, and the
   same weights as eager channels_last and torch.compile (failures recorded, not hidden).
2. serve: `serve run` of config.gpu.yaml (model_uri pointed at the bench artifact) with
   serve.env, loaded closed-loop by bench/loadgen.py at each concurrency, once with
   decode_on: ingress and once with decode_on: model; /metadata checked afterwards so a run
   that did not get the device, dtype or decode path it asked for is refused, not reported.
3. gpu_util: nvidia-smi sampled every 200 ms during each load level (bench/gpu_util.py).
4. training: train_job.synthetic data, then a 1-epoch Ray Train run (--use-gpu --precision
   16-mixed): wall time and the exported artifact's AUROC.

Without CUDA (or with --smoke) it runs small on the CPU instead (about 90 s on 2 cores):
mobilenet_v3_small at 64 px, float32/float16/bfloat16, batch 1/2/4, torch.compile with the
`eager` backend (inductor alone compiles for ~60 s here), config.yaml at c=1,2 for both decode
paths, no utilisation, a tiny bf16-mixed training run. Such results are labelled cpu-smoke
and written to gpu-check-cpu-smoke.* so they never pass for GPU figures.

Writes RESULTS/TAG.json and TAG.md (printed too). Every setting is a flag; see --help.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import httpx
import yaml

from bench import run as serving_bench
from bench.artifacts import bench_artifact
from bench.gpu_util import NVIDIA_SMI, UtilSampler

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
POWERS_TO_256 = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LOADGEN_WARMUP_S = 1.5  # bench/loadgen.py's default, excluded from utilisation samples too

GPU_DEFAULTS = {
    "device": "cuda",
    "backbones": ["resnet34", "mobilenet_v3_small"],
    "image_size": 224,
    "precisions": ["float32", "float16"],
    "reference_precision": "float16",
    "batch_sizes": POWERS_TO_256,
    "seconds": 2.0,
    "threads": min(8, os.cpu_count() or 1),
    "compile_backend": "inductor",
    "model_timeout": 1800,
    "serve_config": "config.gpu.yaml",
    "levels": POWERS_TO_256,
    "serve_seconds": 5.0,
    "util_command": NVIDIA_SMI,
    "train_images": 6000,
    "train_args": "--backbone resnet34 --image-size 224 --batch-size 128 --use-gpu "
    "--precision 16-mixed --num-workers 1 --dataloader-workers 6 "
    f"--cpus-per-worker {min(8, os.cpu_count() or 1)}",
    "train_timeout": 1800,
    "tag": "gpu-check",
}
SMOKE_DEFAULTS = {
    "device": "cpu",
    "backbones": ["mobilenet_v3_small"],
    "image_size": 64,
    "precisions": ["float32", "float16", "bfloat16"],
    "reference_precision": "float16",
    "batch_sizes": [1, 2, 4],
    "seconds": 0.3,
    # 1 thread: with 2 on this shared 2-core box, a core taken by anything else stalled every
    # OpenMP region (batch-4 float16 measured 245 ms instead of 4.4 ms in one run).
    "threads": 1,
    "compile_backend": "eager",
    "model_timeout": 300,
    "serve_config": "config.yaml",
    "levels": [1, 2],
    "serve_seconds": 1.5,
    "util_command": "none",
    "train_images": 200,
    "train_args": "--backbone small_cnn --image-size 64 --batch-size 32 --precision bf16-mixed "
    "--num-workers 1 --dataloader-workers 0 --cpus-per-worker 2",
    "train_timeout": 300,
    "tag": "gpu-check-cpu-smoke",
}
SECTIONS = ("model_only", "serve", "gpu_util", "training")
# Issue #12's targets.
MODEL_ONLY_GOAL = 0.9  # served fp16 best / best of eager channels_last and torch.compile
E2E_GOAL = 0.8  # Serve (decode on model) saturated / model-only best in the serving precision
P50_GOAL_MS = 15.0  # Serve p50 at c=1 minus the batch-1 forward


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__.splitlines()[0],
        epilog="Defaults: the GPU profile where CUDA is present, else the CPU smoke profile.",
    )
    p.add_argument("--smoke", action="store_true", help="the small CPU profile, even with CUDA")
    p.add_argument("--device", help="model-only device (cuda, cuda:1, cpu); serve sets args.device")
    p.add_argument("--backbones", nargs="+")
    p.add_argument("--image-size", type=int)
    p.add_argument("--precisions", nargs="+", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--reference-precision", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-sizes", type=int, nargs="+")
    p.add_argument("--seconds", type=float, help="model-only seconds per batch size and variant")
    p.add_argument("--threads", type=int, help="torch threads of the model-only process")
    p.add_argument("--compile-backend", help="torch.compile backend; none skips torch.compile")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. reduce-overhead")
    p.add_argument("--model-timeout", type=int, help="seconds for one backbone's model-only run")
    p.add_argument("--serve-config", help="base Serve config (config.gpu.yaml / config.yaml)")
    p.add_argument("--levels", type=int, nargs="+", help="closed-loop concurrency levels")
    p.add_argument("--serve-seconds", type=float, help="measured seconds per level")
    p.add_argument("--decode-on", nargs="+", choices=["ingress", "model"],
                   default=["ingress", "model"])  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                   help="override the Serve config, e.g. FaceAttributeModel.user_config.max_batch_size=128")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of serve run and training, over serve.env's (NAME= unsets)")  # fmt: skip
    p.add_argument("--util-command", help=f"GPU sampler (default: {NVIDIA_SMI}); none skips it")
    p.add_argument("--train-images", type=int, help="generated faces for the training run")
    p.add_argument("--train-args", help="python -m train_job flags (after --epochs 1, so they win)")
    p.add_argument("--train-timeout", type=int)
    p.add_argument("--skip", nargs="+", default=[], choices=["model_only", "serve", "training"])
    p.add_argument("--tag", help="output name: RESULTS/TAG.json and TAG.md")
    p.add_argument("--results-dir", type=Path, default=serving_bench.RESULTS)
    return p


def settings_from(args: argparse.Namespace, has_cuda: bool) -> dict:
    """The profile's defaults, each overridden by a flag that was given."""
    smoke = args.smoke or not has_cuda
    settings = dict(SMOKE_DEFAULTS if smoke else GPU_DEFAULTS)
    for key, value in vars(args).items():
        if value is not None:
            settings[key] = value
    settings["smoke"] = smoke
    device = settings["device"]
    settings["gpu"] = device.startswith("cuda")
    settings["label"] = ("gpu" if settings["gpu"] else "cpu") + ("-smoke" if smoke else "")
    if settings["gpu"] and not has_cuda:
        raise SystemExit(f"--device {device}: torch sees no CUDA device on this machine")
    return settings


# ---- 1. model only ----------------------------------------------------------------------


def model_only(s: dict) -> dict:
    out = {}
    for backbone in s["backbones"]:
        uri = bench_artifact(backbone, s["image_size"])
        print(f"== model only: {backbone} @ {s['image_size']} px on {s['device']}", flush=True)
        cmd = [
            PY, "-m", "bench.model_variants", "--model-uri", uri, "--device", s["device"],
            "--precisions", *s["precisions"], "--reference-precision", s["reference_precision"],
            "--batch-sizes", *map(str, s["batch_sizes"]), "--seconds", str(s["seconds"]),
            "--threads", str(s["threads"]), "--compile-backend", s["compile_backend"],
            *(["--compile-mode", s["compile_mode"]] if s.get("compile_mode") else []),
        ]  # fmt: skip
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=s["model_timeout"]
        )
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr[-3000:]}")
        out[backbone] = json.loads(done.stdout.strip().splitlines()[-1])
        for v in out[backbone]["variants"]:
            best = v["best"] or {}
            print(f"    {v['name']:<20} {v['precision']:<9} {v['status']:<8} best "
                  f"{best.get('images_per_s')} img/s at batch {best.get('batch')}"
                  + (f"  ({v['error'][:120]})" if v.get("error") else ""), flush=True)  # fmt: skip
    return {"status": "ok", "backbones": out}


def variant(entry: dict, name: str, precision: str) -> dict | None:
    return next(
        (v for v in entry["variants"] if v["name"] == name and v["precision"] == precision), None
    )


# ---- 2 and 3. serve end to end, GPU utilisation -----------------------------------------


def serve_config(base: Path, model_uri: str, port: int, overrides: dict) -> dict:
    """``base`` with the port, model_uri and dotted overrides applied. Same key syntax as
    bench/run.py's --set (whose serve_config always starts from config.yaml)."""
    config = yaml.safe_load(base.read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["FaceAttributeModel"]["user_config"]["model_uri"] = model_uri
    for dotted, value in overrides.items():
        first, *path, key = dotted.split(".")
        node = app["args"] if first == "args" else deployments[first]
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return config


def serve_env(extra: list[str]) -> dict[str, str]:
    """serve.env, as `make serve` and `make bench` run, plus two settings of this benchmark:

    - RAY_ADDRESS=local: serve run and training start their own Ray instead of joining one
      some other command left running;
    - RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2: with serve.env's direct ingress, a
      stopping ingress replica keeps draining for at least 30 s (Ray's default), so each Ctrl-C
      of serve run took 32 s here; the load has ended by then, so the figures are unaffected.
    """
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ADDRESS": "local",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }
    env |= serving_bench.shipped_env()
    env |= dict(item.split("=", 1) for item in extra)
    return {k: v for k, v in env.items() if v}


def check_serving(meta: dict, expect: dict) -> dict:
    """/metadata's serving block must show what the config asked for; else the figures are
    of some other configuration and are refused."""
    serving = meta["serving"]
    seen = {
        "device": serving["device"].split(":")[0],
        "dtype": serving["dtype"],
        "decode_on": serving["decode_on"],
    }
    if seen != expect:
        raise RuntimeError(f"Serve ran {seen}, the config asked for {expect}: figures refused")
    return serving


def serve_once(s: dict, uri: str, image: Path, decode_on: str, env: dict) -> tuple[dict, dict]:
    overrides = {**s["overrides"], "args.decode_on": decode_on}
    overrides.setdefault("args.device", s["device"].split(":")[0])
    port = serving_bench.free_port()
    config = serve_config(ROOT / s["serve_config"], uri, port, overrides)
    args = config["applications"][0]["args"]
    expect = {"device": args["device"], "dtype": args.get("precision", "float32"),
              "decode_on": decode_on}  # fmt: skip
    util_by_level: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg, log_path = Path(tmp) / "config.yaml", Path(tmp) / "serve.log"
        cfg.write_text(yaml.safe_dump(config))
        with open(log_path, "wb") as log:
            proc = serving_bench.start_serve_run(cfg, log, env)
            try:
                started = time.perf_counter()
                try:
                    serving_bench.wait_ready(f"http://127.0.0.1:{port}/readyz", 300, proc)
                except (RuntimeError, TimeoutError):
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    raise
                ready_s = time.perf_counter() - started
                url = f"http://127.0.0.1:{port}/classify"
                for c in s["levels"]:
                    sampler = None
                    if s["util_command"] != "none":
                        try:
                            sampler = UtilSampler(s["util_command"], LOADGEN_WARMUP_S).start()
                        except OSError as e:  # no nvidia-smi: the load figures still count
                            util_by_level[str(c)] = {"samples": 0, "error": str(e)}
                    rows += serving_bench.load(url, image, [c], s["serve_seconds"], proc.pid)
                    if sampler:
                        util_by_level[str(c)] = sampler.stop()
                meta = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=10).json()
            finally:
                stopping = time.perf_counter()
                serving_bench.stop(proc)
                stop_s = time.perf_counter() - stopping
    serving = check_serving(meta, expect)
    run = {
        "overrides": overrides,
        "ready_s": round(ready_s, 1),
        "stop_s": round(stop_s, 1),
        "levels": rows,
        "serving": serving,
    }
    return run, util_by_level


def serve_all(s: dict) -> tuple[dict, dict]:
    env = serve_env(s["env"])
    runs: dict[str, dict] = {}
    util: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        image = serving_bench.test_images(Path(tmp))["celeba"]
        for backbone in s["backbones"]:
            uri = bench_artifact(backbone, s["image_size"])
            for decode_on in s["decode_on"]:
                print(
                    f"== serve: {backbone}, {s['serve_config']}, decode_on {decode_on}", flush=True
                )
                run, levels_util = serve_once(s, uri, image, decode_on, env)
                runs.setdefault(backbone, {})[decode_on] = run
                if levels_util:
                    util.setdefault(backbone, {})[decode_on] = levels_util
    serve = {"status": "ok", "config": s["serve_config"], "serve_env": env, "runs": runs}
    if s["util_command"] == "none":
        reason = "no GPU: cpu-smoke run" if not s["gpu"] else "--util-command none"
        return serve, {"status": "skipped", "reason": reason}
    return serve, {"status": "ok", "command": s["util_command"], "runs": util}


# ---- 4. training ------------------------------------------------------------------------


def training(s: dict) -> dict:
    from model_store import load_artifact

    env = {**os.environ, **serve_env(s["env"])}
    with tempfile.TemporaryDirectory() as tmp:
        data, store = Path(tmp) / "data", Path(tmp) / "store"
        print(f"== training: {s['train_images']} generated faces, {s['train_args']}", flush=True)
        gen = [PY, "-m", "train_job.synthetic", "--out", str(data),
               "--num-images", str(s["train_images"])]  # fmt: skip
        subprocess.run(gen, check=True, cwd=ROOT, capture_output=True, timeout=s["train_timeout"])
        cmd = [PY, "-m", "train_job", "--data-dir", str(data), "--model-store", str(store),
               "--storage-path", str(Path(tmp) / "ray_results"), "--epochs", "1",
               *shlex.split(s["train_args"])]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=s["train_timeout"])  # fmt: skip
        wall_s = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"training exited {done.returncode}: {done.stderr[-3000:]}")
        meta = load_artifact(str(store / "face-attributes" / "latest")).metadata
    training_meta = meta.training or {}
    return {
        "status": "ok",
        "command": shlex.join(["python", *cmd[1:]]),
        "wall_s": round(wall_s, 1),
        "images": s["train_images"],
        "val_auroc": meta.metrics.get("val_auroc"),
        "test_auroc": meta.metrics.get("test_auroc"),
        "precision": training_meta.get("precision"),
        "use_gpu": training_meta.get("use_gpu"),
        "backbone": meta.backbone,
        "duration_s_in_metadata": training_meta.get("duration_s"),
        "samples": training_meta.get("samples"),
    }


# ---- targets, tables --------------------------------------------------------------------


def targets(results: dict, s: dict) -> list[dict]:
    """Issue #12's targets, each met / not met / not evaluable from this run's figures."""
    out = []
    models = results.get("model_only", {}).get("backbones", {})
    for backbone, entry in models.items():
        served = variant(entry, "served", "float16")
        refs = [variant(entry, n, s["reference_precision"]) for n in ("eager-channels-last", "torch.compile")]  # fmt: skip
        ref_best = max((r["best"]["images_per_s"] for r in refs if r and r["best"]), default=None)
        if served and served["best"] and ref_best:
            ratio = served["best"]["images_per_s"] / ref_best
            out.append(target(f"{backbone}: served fp16 best / best plain PyTorch",
                              ratio, MODEL_ONLY_GOAL, ratio >= MODEL_ONLY_GOAL))  # fmt: skip
    runs = results.get("serve", {}).get("runs", {})
    for backbone, by_decode in runs.items():
        entry = models.get(backbone)
        run = by_decode.get("model")
        if not entry or not run:
            continue
        limit = variant(entry, "served", run["serving"]["dtype"])
        if not limit or not limit["best"]:
            out.append(target(f"{backbone}: e2e / model-only", None, E2E_GOAL, None))
            continue
        peak = max(r["throughput_rps"] for r in run["levels"])
        ratio = peak / limit["best"]["images_per_s"]
        out.append(target(f"{backbone}: Serve (decode on model) saturated / model-only best "
                          f"({run['serving']['dtype']})", ratio, E2E_GOAL, ratio >= E2E_GOAL))  # fmt: skip
        batch1 = next((r for r in limit["rows"] if r.get("batch") == 1 and "error" not in r), None)
        first = run["levels"][0]
        if batch1 and first["concurrency"] == 1 and first["p50_ms"] is not None:
            delta = first["p50_ms"] - batch1["batch_latency_ms"]
            out.append(target(f"{backbone}: Serve p50 at c=1 minus batch-1 forward (ms)",
                              delta, P50_GOAL_MS, delta <= P50_GOAL_MS, at_most=True))  # fmt: skip
    return out


def target(name: str, value, goal: float, met: bool | None, at_most: bool = False) -> dict:
    return {"name": name, "value": None if value is None else round(value, 3),
            "goal": f"{'<=' if at_most else '>='} {goal}", "met": met}  # fmt: skip


def fmt_row(row: dict | None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "error"
    return f"{row['images_per_s']} ({row['batch_latency_ms']} ms)"


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# gpu-check: {results['label']}", ""]
    if not s["gpu"]:
        lines += ["**No GPU in this run: every figure below is a CPU figure (cpu-smoke), "
                  "measured to keep the GPU path's code working, not a GPU measurement.**", ""]  # fmt: skip
    lines += [f"{results['date']}; {results['machine']}; device: {results['device_name']}", ""]
    models = results["model_only"].get("backbones", {})
    for backbone, entry in models.items():
        lines += [f"## Model only: {backbone} @ {entry['input_size'][0]} px "
                  f"({entry['device']}, img/s and median batch latency)", ""]  # fmt: skip
        cols = [(v["name"], v["precision"]) for v in entry["variants"]]
        lines.append("| batch | " + " | ".join(f"{n} {p}" for n, p in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for batch in s["batch_sizes"]:
            cells = [fmt_row(next((r for r in variant(entry, n, p)["rows"] if r["batch"] == batch), None))
                     for n, p in cols]  # fmt: skip
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        for v in entry["variants"]:
            if v.get("error") or v["status"] != "ok":
                lines.append(f"\n{v['name']} {v['precision']}: {v['status']}: {v.get('error')}")
            if "max_abs_diff" in v:
                lines.append(f"\n{v['name']} vs served, max abs diff of probabilities: {v['max_abs_diff']}")  # fmt: skip
        lines.append("")
    util = results["gpu_util"].get("runs", {})
    for backbone, by_decode in results["serve"].get("runs", {}).items():
        lines += [f"## Serve end to end: {backbone}, {s['serve_config']} "
                  "(req/s, p50 / p99 ms, errors, GPU util mean / max %)", ""]  # fmt: skip
        modes = list(by_decode)
        lines.append("| c | " + " | ".join(f"decode on {m}" for m in modes) + " |")
        lines.append("|---" * (len(modes) + 1) + "|")
        for i, c in enumerate(r["concurrency"] for r in by_decode[modes[0]]["levels"]):
            cells = []
            for m in modes:
                r = by_decode[m]["levels"][i]
                u = util.get(backbone, {}).get(m, {}).get(str(c))
                gpu = f", {u.get('util_mean_pct')} / {u.get('util_max_pct')}%" if u else ""
                cells.append(f"{r['throughput_rps']}, {r['p50_ms']} / {r['p99_ms']}, "
                             f"{r['errors']}{gpu}")  # fmt: skip
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        for m in modes:
            sv = by_decode[m]["serving"]
            lines.append(f"\ndecode on {m}: served on {sv['device']} in {sv['dtype']}; "
                         f"forward batch sizes seen: {sv.get('batch_sizes')}")  # fmt: skip
        lines.append("")
    if results["gpu_util"]["status"] != "ok":
        lines += [f"GPU utilisation: {results['gpu_util']['status']} "
                  f"({results['gpu_util'].get('reason') or results['gpu_util'].get('error')})", ""]  # fmt: skip
    t = results["training"]
    if t["status"] == "ok":
        lines += ["## Training", "", f"`{t['command']}`: {t['wall_s']} s wall, "
                  f"val AUROC {t['val_auroc']}, test AUROC {t['test_auroc']} "
                  f"({t['backbone']}, {t['precision']}, use_gpu {t['use_gpu']}, "
                  f"samples {t['samples']})", ""]  # fmt: skip
    lines += ["## Targets" + ("" if s["gpu"] else " (cpu-smoke: not a GPU verdict)"), ""]
    for tg in results["targets"]:
        verdict = {True: "met", False: "not met", None: "not evaluable"}[tg["met"]]
        lines.append(f"- {tg['name']}: {tg['value']} (goal {tg['goal']}) -> {verdict}")
    for name in SECTIONS:
        if results[name]["status"] == "failed":
            lines.append(f"\n**{name} failed**: {results[name]['error'][-1500:]}")
    sections = ", ".join(
        f"{n} {results[n]['section_s']} s"
        for n in SECTIONS
        if "section_s" in results[n] and n != "gpu_util"  # measured within serve
    )
    lines.append(f"\nTotal {results['total_s']} s ({sections}).")
    return "\n".join(lines) + "\n"


def guarded(name: str, fn, *args):
    """A section's result, or {status: failed, error} (its traceback printed) so the other
    sections still run."""
    start = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as e:
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        print(f"{name} failed: {result['error'][:500]}", file=sys.stderr)
    for part in result if isinstance(result, tuple) else (result,):
        part["section_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = settings_from(args, cuda_available())
    s["overrides"] = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in s["set"])}
    started = time.perf_counter()
    results: dict = {
        "label": s["label"],
        "gpu": s["gpu"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {k: v for k, v in s.items() if k != "results_dir"},
    }
    print(f"gpu-check: {s['label']}" + ("" if s["gpu"] else " (no GPU: CPU figures only)"))
    skipped = {"status": "skipped", "reason": "--skip"}
    results["model_only"] = (
        skipped if "model_only" in s["skip"] else guarded("model_only", model_only, s)
    )
    if "serve" in s["skip"]:
        results["serve"], results["gpu_util"] = skipped, skipped
    else:
        both = guarded("serve", serve_all, s)
        results["serve"], results["gpu_util"] = both if isinstance(both, tuple) else (both, both)
    results["training"] = skipped if "training" in s["skip"] else guarded("training", training, s)
    entries = list(results["model_only"].get("backbones", {}).values())
    results["device_name"] = entries[0]["device_name"] if entries else s["device"]
    results["targets"] = targets(results, s)
    results["total_s"] = round(time.perf_counter() - started, 1)
    s["results_dir"].mkdir(parents=True, exist_ok=True)
    (s["results_dir"] / f"{s['tag']}.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (s["results_dir"] / f"{s['tag']}.md").write_text(table)
    print(table)
    return 1 if any(results[n]["status"] == "failed" for n in SECTIONS) else 0


if __name__ == "__main__":
    sys.exit(main())
