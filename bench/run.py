"""One command for the serving benchmark: `make bench` (python -m bench.run).

For each backbone: the model-only limit, then `serve run` of config.yaml (model_uri pointed at
the benchmark artifact) and the hand-written Starlette baseline, each loaded by a separate
process (nice 19) at concurrency 1..64 with a CelebA-sized JPEG, plus a 1920x1080 photo for
Serve. Writes bench/results/TAG.json, TAG.png (plot) and TAG.md (Markdown table, also
printed); TAG is --tag, latest by default.
Everything is bounded in time and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from bench.artifacts import bench_artifact

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def shipped_env() -> dict[str, str]:
    """serve.env: the environment the project runs Serve with (make serve, the image)."""
    lines = (ROOT / "serve.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(workdir: Path) -> dict[str, Path]:
    from train_job.synthetic import draw_attributes, render_face

    rng = np.random.default_rng(7)
    face = render_face(draw_attributes(rng), rng)
    small = workdir / "celeba_178x218.jpg"
    face.save(small, "JPEG", quality=90)
    # A photo-sized JPEG with texture (noise), so it decodes like a camera photo.
    noise = (rng.random((1080, 1920, 3)) * 60).astype(np.uint8)
    big = Image.fromarray(np.asarray(face.resize((1920, 1080))) // 2 + noise)
    large = workdir / "photo_1920x1080.jpg"
    big.save(large, "JPEG", quality=90)
    return {"celeba": small, "photo": large}


def wait_ready(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load(url: str, image: Path, levels: list[int], seconds: float) -> list[dict]:
    rows = []
    for c in levels:
        out = subprocess.run(
            [PY, "-m", "bench.loadgen", "--url", url, "--image", str(image), "--concurrency", str(c), "--seconds", str(seconds)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"    c={c:<3} {row['throughput_rps']:>7} req/s  p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  errors {row['errors']} {row['statuses'] if row['errors'] else ''} cpu {row['cpu_percent']}%",
            flush=True,
        )
        rows.append(row)
    return rows


def serve_config(model_uri: str, port: int, overrides: dict) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    model = next(d for d in app["deployments"] if d["name"] == "FaceAttributeModel")
    model["user_config"]["model_uri"] = model_uri
    for dotted, value in overrides.items():  # e.g. "FaceAttributeModel.user_config.max_batch_size"
        *path, key = dotted.split(".")
        node = (
            app
            if path[0] == "args"
            else next(d for d in app["deployments"] if d["name"] == path[0])
        )
        for p in path[1:] if path[0] != "args" else path:
            node = node.setdefault(p, {})
        node[key] = value
    return config


def run_serve(
    model_uri: str, images: dict, levels: list[int], seconds: float, overrides: dict, env: dict
) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(serve_config(model_uri, port, overrides)))
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115 (closed with the directory)
        proc = subprocess.Popen(
            [str(Path(PY).with_name("serve")), "run", str(cfg)], cwd=ROOT, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip
        try:
            try:
                wait_ready(f"http://127.0.0.1:{port}/readyz", 180, proc)
            except (RuntimeError, TimeoutError):
                print((Path(tmp) / "serve.log").read_text()[-3000:], file=sys.stderr)
                raise
            url = f"http://127.0.0.1:{port}/classify"
            rows = load(url, images["celeba"], levels, seconds)
            print("    1920x1080 photo:", flush=True)
            photo = load(url, images["photo"], [1, 8], seconds)
        finally:
            stop(proc)
    return {"celeba": rows, "photo": photo}


def run_baseline(
    model_uri: str, images: dict, levels: list[int], seconds: float, threads: int
) -> dict:
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "bench.baseline_server", "--model-uri", model_uri, "--port", str(port), "--threads", str(threads)],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("baseline server did not start") from None
                time.sleep(0.5)
        return {
            "celeba": load(f"http://127.0.0.1:{port}/classify", images["celeba"], levels, seconds)
        }
    finally:
        stop(proc)


def model_limit(model_uri: str) -> list[dict]:
    out = subprocess.run(
        [PY, "-m", "bench.model_limit", "--model-uri", model_uri],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, name in enumerate(models):
        entry = results["models"][name]
        limit = max(t["best"]["images_per_s"] for t in entry["model_limit"])
        for system, data in entry["systems"].items():
            xs = [r["concurrency"] for r in data["celeba"]]
            axes[row][0].plot(
                xs, [r["throughput_rps"] for r in data["celeba"]], marker="o", label=system
            )
            axes[row][1].plot(xs, [r["p99_ms"] for r in data["celeba"]], marker="o", label=system)
        axes[row][0].axhline(limit, linestyle="--", color="gray", label="model-only limit")
        axes[row][0].set(
            title=f"{name}: throughput", xlabel="concurrency", ylabel="req/s", xscale="log"
        )
        axes[row][1].set(
            title=f"{name}: p99 latency",
            xlabel="concurrency",
            ylabel="ms",
            xscale="log",
            yscale="log",
        )
        for ax in axes[row]:
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle(f"{results['machine']} — {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# Issue 7's targets: saturated end-to-end / model-only, per backbone.
RATIO_TARGETS = {"resnet34": 0.9, "mobilenet_v3_small": 0.7}


def targets(
    name: str, serve: list[dict], limit: float, batch1_ms: float, baseline: dict | None
) -> list[str]:
    """Met / not met for each target, from this run's numbers."""
    peak = max(r["throughput_rps"] for r in serve)
    rows = []
    if name in RATIO_TARGETS:
        goal = RATIO_TARGETS[name]
        rows.append(
            f"- saturated / model-only >= {goal}: {peak / limit:.2f} -> {'met' if peak / limit >= goal else 'not met'}"
        )
    delta = serve[0]["p50_ms"] - batch1_ms
    rows.append(
        f"- p50 at c=1 within 15 ms of batch-1 latency: +{delta:.1f} ms -> {'met' if delta <= 15 else 'not met'}"
    )
    if baseline:
        pairs = [(s, b) for s, b in zip(serve, baseline["celeba"]) if s["concurrency"] >= 4]
        ahead = all(s["throughput_rps"] > b["throughput_rps"] for s, b in pairs)
        ratios = ", ".join(
            f"c={s['concurrency']}: {s['throughput_rps'] / b['throughput_rps']:.2f}x"
            for s, b in pairs
        )
        rows.append(
            f"- ahead of the baseline at every c >= 4 ({ratios}) -> {'met' if ahead else 'not met'}"
        )
    return ["Targets:", *rows, ""]


def markdown(results: dict) -> str:
    lines = []
    for name, entry in results["models"].items():
        best = max(
            (t["best"] | {"threads": t["threads"]} for t in entry["model_limit"]),
            key=lambda r: r["images_per_s"],
        )
        b1 = min(
            r["batch_latency_ms"]
            for t in entry["model_limit"]
            for r in t["rows"]
            if r["batch"] == 1
        )
        lines.append(f"\n### {name}\n")
        lines.append(
            f"Model-only limit: **{best['images_per_s']} img/s** (batch {best['batch']}, {best['threads']} threads); batch-1 latency {b1} ms.\n"
        )
        systems = entry["systems"]
        header = (
            "| concurrency | " + " | ".join(f"{s} req/s | {s} p50 / p99 ms" for s in systems) + " |"
        )
        lines += [header, "|" + "---|" * (1 + 2 * len(systems))]
        for i, level in enumerate(r["concurrency"] for r in next(iter(systems.values()))["celeba"]):
            cells = []
            for s in systems.values():
                r = s["celeba"][i]
                cells += [f"{r['throughput_rps']}", f"{r['p50_ms']} / {r['p99_ms']}"]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        serve = systems["ray-serve"]["celeba"]
        peak = max(r["throughput_rps"] for r in serve)
        lines.append(f"\nSaturated end-to-end / model-only: **{peak / best['images_per_s']:.2f}**; "
                     f"p50 at c=1 minus batch-1 latency: **{serve[0]['p50_ms'] - b1:.1f} ms**.\n")  # fmt: skip
        lines += targets(name, serve, best["images_per_s"], b1, systems.get("baseline"))
        photo = systems["ray-serve"].get("photo")
        if photo:
            lines.append(
                "1920x1080 photo through Serve: "
                + ", ".join(
                    f"c={r['concurrency']}: {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms"
                    for r in photo
                )
                + ".\n"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet34", "mobilenet_v3_small"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per level")
    parser.add_argument("--baseline-threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                        help="override config.yaml for the Serve run, e.g. args.torch_threads=2")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for serve run, over serve.env's (NAME= unsets one)")  # fmt: skip
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--no-baseline", action="store_true", help="measure Serve only (A/B runs)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    env = {**shipped_env(), **dict(s.split("=", 1) for s in args.env)}
    env = {k: v for k, v in env.items() if v}
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "serve_overrides": overrides,
        "serve_env": env,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = test_images(Path(tmp))
        for backbone in args.backbones:
            uri = bench_artifact(backbone)
            print(f"== {backbone}: model-only limit", flush=True)
            limit = model_limit(uri)
            for t in limit:
                print(f"    {t['threads']} threads: best {t['best']}", flush=True)
            print(f"== {backbone}: ray-serve (config.yaml)", flush=True)
            serve = run_serve(uri, images, args.levels, args.seconds, overrides, env)
            systems = {"ray-serve": serve}
            if not args.no_baseline:
                print(f"== {backbone}: hand-written baseline", flush=True)
                systems["baseline"] = run_baseline(
                    uri, images, args.levels, args.seconds, args.baseline_threads
                )
            results["models"][backbone] = {"model_limit": limit, "systems": systems}
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / f"{args.tag}.png")
    table = markdown(results)
    (RESULTS / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
