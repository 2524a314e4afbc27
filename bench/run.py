"""One command for the serving benchmark: `make bench` (python -m bench.run).

For each backbone: the model-only limit and the decode limit, then `serve run` of config.yaml
(model_uri pointed at the benchmark artifact) and the hand-written Starlette baseline (lock-free:
thread-pool inference, as a FastAPI `def` endpoint does; `--baselines lockfree locked` adds the
one-forward-at-a-time variant), each loaded by a separate process (nice 19) at concurrency 1..64
with a CelebA-sized JPEG, plus a 1920x1080 photo for Serve. At every level the CPU seconds of
every process the server started are read from /proc (bench/cpu_account.py), per role. Writes
bench/results/TAG.json, TAG.png (plot) and TAG.md (Markdown tables, also printed); TAG is
--tag, latest by default.
Everything is bounded in time and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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
    # One real face in a photo (scikit-image's astronaut, 512x512): /faces against /classify.
    import skimage.data

    face_photo = workdir / "astronaut_512.jpg"
    Image.fromarray(skimage.data.astronaut()).save(face_photo, "JPEG", quality=90)
    return {"celeba": small, "photo": large, "face": face_photo}


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


def start_serve_run(config: Path, log: IO[bytes], env: dict[str, str]) -> subprocess.Popen:
    """`serve run config` in its own session, stopped by stop() with Ctrl-C's SIGINT. SIGINT
    is set back to its default in the child: a benchmark started in the background (``&``, CI,
    a test) passes SIGINT on ignored, and serve run then ignored stop()'s Ctrl-C and was killed
    after 60 s (each of gpu_check's smoke runs lost 60 s to it)."""
    return subprocess.Popen(
        [str(Path(PY).with_name("serve")), "run", str(config)], cwd=ROOT, start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load(
    url: str,
    image: Path,
    levels: list[int],
    seconds: float,
    server_pid: int,
    api_key: str | None = None,
) -> list[dict]:
    rows = []
    for c in levels:
        out = subprocess.run(
            [PY, "-m", "bench.loadgen", "--url", url, "--image", str(image), "--concurrency", str(c),
             "--seconds", str(seconds), "--server-pid", str(server_pid),
             *(["--api-key", api_key] if api_key else [])],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"    c={c:<3} {row['throughput_rps']:>7} req/s  p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  errors {row['errors']} {row['statuses'] if row['errors'] else ''} "
            f"box cpu {row['cpu_percent']}%  server {row['server_cpu_s_per_1000']} CPU-s/1000 req, {row['server_cores_busy']} cores",
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
    detector = next(d for d in app["deployments"] if d["name"] == "FaceDetector")
    detector["user_config"]["model_uri"] = bench_detector()
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


@contextlib.contextmanager
def serving(model_uri: str, overrides: dict, env: dict) -> Iterator[tuple[subprocess.Popen, int]]:
    """`serve run` of config.yaml (with overrides) on a free port, as `make serve` runs it;
    yields (the serve run process, port) once /readyz answers, and stops it afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(serve_config(model_uri, port, overrides)))
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115 (closed with the directory)
        proc = start_serve_run(cfg, log, env)
        try:
            try:
                wait_ready(f"http://127.0.0.1:{port}/readyz", 180, proc)
            except (RuntimeError, TimeoutError):
                print((Path(tmp) / "serve.log").read_text()[-3000:], file=sys.stderr)
                raise
            yield proc, port
        finally:
            stop(proc)


def bench_detector() -> str:
    """The face detector artifact (python -m train_job.face_detector) in the bench store."""
    from bench.artifacts import STORE
    from model_store import DetectorMetadata, load_artifact
    from model_store.store import ArtifactError
    from train_job.face_detector import export

    latest = STORE / "face-detector" / "latest"
    try:
        load_artifact(str(latest), schema=DetectorMetadata)
    except ArtifactError:
        export(str(STORE))
    return str(latest)


def run_serve(
    model_uri: str,
    images: dict,
    levels: list[int],
    seconds: float,
    overrides: dict,
    env: dict,
    api_key: str | None = None,
    photos: bool = True,
) -> dict:
    """The CelebA-sized JPEG at every level; with ``photos`` also the 1920x1080 photo and the
    one-face photo through /classify and /faces."""
    with serving(model_uri, overrides, env) as (proc, port):
        base = f"http://127.0.0.1:{port}"
        rows = load(f"{base}/classify", images["celeba"], levels, seconds, proc.pid, api_key)
        result = {"celeba": rows}
        if photos:
            print("    1920x1080 photo:", flush=True)
            result["photo"] = load(f"{base}/classify", images["photo"], [1, 8], seconds, proc.pid)
            print("    a one-face photo (512x512): /classify, then /faces", flush=True)
            face_levels = [1, 8, 32]
            result["face_classify"] = load(
                f"{base}/classify", images["face"], face_levels, seconds, proc.pid
            )
            result["face_faces"] = load(
                f"{base}/faces", images["face"], face_levels, seconds, proc.pid
            )
    return result


def keyed(overrides: dict, workdir: Path, name: str) -> tuple[dict, str]:
    """Overrides that turn API keys on (one key, with a quota no load reaches: its check runs
    but never refuses), and the key; a key file per ``name`` (each backbone's run)."""
    from serve_app import keys as key_file

    path = workdir / f"keys-{name}.yaml"
    key = key_file.add(path, "bench", rps=1e9, per_minute=10**12)
    return {**overrides, "args.api_keys_file": str(path)}, key


def run_baseline(
    model_uri: str, images: dict, levels: list[int], seconds: float, threads: int, mode: str
) -> dict:
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "bench.baseline_server", "--model-uri", model_uri, "--port", str(port),
         "--threads", str(threads), "--mode", mode],
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
            "celeba": load(
                f"http://127.0.0.1:{port}/classify", images["celeba"], levels, seconds, proc.pid
            )
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


def decode_limit(image: Path, seconds: float = 3.0) -> float:
    """Images per second the ingress's decode path (PIL: decode, resize to 224) sustains on
    this box: one decoding thread per core (Pillow releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    from serve_app.common.decode import decode_image
    from serve_app.common.protocol import PreprocessSpec

    data = image.read_bytes()
    spec = PreprocessSpec((224, 224), "bilinear", (0.5,) * 3, (0.5,) * 3)
    deadline = time.monotonic() + seconds

    def work(_: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            decode_image(data, spec, 40_000_000)
            n += 1
        return n

    start = time.monotonic()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        done = sum(pool.map(work, range(os.cpu_count())))
    return round(done / (time.monotonic() - start), 1)


def pipeline_limit(model_best: float, decode: float) -> float:
    """decode and the model share the box: each image costs 1/decode + 1/model box-seconds."""
    return round(1 / (1 / model_best + 1 / decode), 1)


def _at(rows: list[dict], c: int) -> dict | None:
    return next((r for r in rows if r["concurrency"] == c), None)


def targets(name: str, serve: list[dict], limits: dict, baseline: dict | None) -> list[str]:
    """Issue 13's targets, met or not, from this run's numbers (mobilenet_v3_small: against the
    lock-free baseline and the decode+model pipeline; resnet34: against the model alone)."""
    peak = max(r["throughput_rps"] for r in serve)
    rows = []

    def verdict(text: str, met: bool) -> None:
        rows.append(f"- {text} -> {'met' if met else 'not met'}")

    if name == "resnet34":
        ratio = peak / limits["model"]
        verdict(f"saturated >= 0.95x the model-only limit: {ratio:.2f}x", ratio >= 0.95)
        c32, c64 = _at(serve, 32), _at(serve, 64)
        if c32 and c64:
            verdict(
                f"no drop from c=32 to c=64: {c32['throughput_rps']} -> {c64['throughput_rps']}",
                c64["throughput_rps"] >= 0.98 * c32["throughput_rps"],
            )
    else:
        ratio = peak / limits["pipeline"]
        verdict(f"saturated >= 0.85x the decode+model pipeline limit: {ratio:.2f}x", ratio >= 0.85)
    if baseline and name != "resnet34":
        base = baseline["celeba"]
        pairs = [(s, b) for s, b in zip(serve, base) if s["concurrency"] >= 2]
        ratios = ", ".join(
            f"c={s['concurrency']}: {s['throughput_rps'] / b['throughput_rps']:.2f}x"
            for s, b in pairs
        )
        ahead = all(s["throughput_rps"] > b["throughput_rps"] for s, b in pairs)
        verdict(f"ahead of the lock-free baseline at every c >= 2 ({ratios})", ahead)
        sat = peak / max(r["throughput_rps"] for r in base)
        verdict(f">= 1.2x the baseline at saturation: {sat:.2f}x", sat >= 1.2)
        delta = serve[0]["p50_ms"] - base[0]["p50_ms"]
        verdict(f"p50 at c=1 within 3 ms of the baseline's: {delta:+.1f} ms", delta <= 3)
        s32, b32 = _at(serve, 32), _at(base, 32)
        if s32 and b32 and "server_cpu_s_per_1000" in s32:
            cpu = s32["server_cpu_s_per_1000"] / b32["server_cpu_s_per_1000"]
            verdict(
                f"CPU-s per 1,000 requests at c=32 <= 1.1x the baseline's: {cpu:.2f}x", cpu <= 1.1
            )
    return ["Targets (issue 13):", *rows, ""]


def cpu_tables(systems: dict) -> list[str]:
    """CPU seconds per 1,000 answered requests and cores busy, every process of each server,
    then the Serve run's split by role."""
    lines = ["\nServer CPU (every process it started; upper bounds for torch, see cpu_account):\n"]
    lines += [
        "| concurrency | " + " | ".join(f"{s} CPU-s/1000 req / cores" for s in systems) + " |"
    ]
    lines += ["|" + "---|" * (1 + len(systems))]
    for i, level in enumerate(r["concurrency"] for r in next(iter(systems.values()))["celeba"]):
        cells = [
            f"{r.get('server_cpu_s_per_1000', '-')} / {r.get('server_cores_busy', '-')}"
            for r in (s["celeba"][i] for s in systems.values())
        ]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    serve = systems["ray-serve"]["celeba"]
    roles = sorted({k for r in serve for k in r.get("server_cpu_s_by_role", {})})
    if roles:
        lines += ["\nray-serve, CPU-s per 1,000 requests by process role:\n"]
        lines += ["| role | " + " | ".join(f"c={r['concurrency']}" for r in serve) + " |"]
        lines += ["|" + "---|" * (1 + len(serve))]
        for role in roles:
            cells = [f"{per_1000(r, role):.2f}" for r in serve]
            lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return lines


def per_1000(row: dict, role: str) -> float:
    ok = row["statuses"].get("200", 0)
    return 1000 * row["server_cpu_s_by_role"].get(role, 0.0) / max(1, ok)


def faces_lines(serve: dict) -> list[str]:
    """/faces against /classify on the same one-face photo, req/s by concurrency."""
    if "face_faces" not in serve:
        return []
    pairs = zip(serve["face_classify"], serve["face_faces"])
    cells = ", ".join(
        f"c={c['concurrency']}: {f['throughput_rps']} vs {c['throughput_rps']} req/s "
        f"({f['throughput_rps'] / c['throughput_rps']:.2f}x), p50 {f['p50_ms']} vs {c['p50_ms']} ms"
        for c, f in pairs
    )
    return [f"One-face photo (512x512), /faces vs /classify: {cells}.\n"]


def keys_lines(plain: list[dict], keyed_rows: list[dict]) -> list[str]:
    cells = ", ".join(
        f"c={p['concurrency']}: {k['throughput_rps'] / p['throughput_rps']:.3f}x"
        for p, k in zip(plain, keyed_rows)
    )
    return [f"With API keys and a quota / without (throughput): {cells}.\n"]


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
        limits = {
            "model": best["images_per_s"],
            "decode": entry["decode_limit"],
            "pipeline": pipeline_limit(best["images_per_s"], entry["decode_limit"]),
        }
        lines.append(f"\n### {name}\n")
        lines.append(
            f"Model-only limit: **{best['images_per_s']} img/s** (batch {best['batch']}, {best['threads']} threads); batch-1 latency {b1} ms. "
            f"Decode limit (PIL, 224, {os.cpu_count()} threads): {limits['decode']} img/s; decode+model pipeline limit: **{limits['pipeline']} img/s**.\n"
        )  # fmt: skip
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
        lines += cpu_tables(systems)
        serve = systems["ray-serve"]["celeba"]
        peak = max(r["throughput_rps"] for r in serve)
        lines.append(f"\nSaturated end-to-end / model-only: **{peak / best['images_per_s']:.2f}**, / pipeline: **{peak / limits['pipeline']:.2f}**; "
                     f"p50 at c=1 minus batch-1 latency: **{serve[0]['p50_ms'] - b1:.1f} ms**.\n")  # fmt: skip
        lines += targets(name, serve, limits, systems.get("baseline"))
        lines += faces_lines(systems["ray-serve"])
        if "ray-serve-keys" in systems:
            lines += keys_lines(serve, systems["ray-serve-keys"]["celeba"])
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
    parser.add_argument("--baseline-threads", type=int, nargs="+", default=[2, 1],
                        help="torch threads of the baseline; several: one baseline run each")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                        help="override config.yaml for the Serve run, e.g. args.torch_threads=2")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for serve run, over serve.env's (NAME= unsets one)")  # fmt: skip
    parser.add_argument("--tag", default="latest")
    parser.add_argument(
        "--keys",
        action="store_true",
        help="also measure Serve with API keys on (a key with a quota), side by side",
    )
    parser.add_argument("--no-baseline", action="store_true", help="measure Serve only (A/B runs)")
    parser.add_argument("--baselines", nargs="+", default=["lockfree"], choices=["lockfree", "locked"],
                        help="hand-written servers to measure: lock-free (thread pool) and/or locked")  # fmt: skip
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
            decode = decode_limit(images["celeba"])
            print(f"    decode limit: {decode} img/s", flush=True)
            print(f"== {backbone}: ray-serve (config.yaml)", flush=True)
            serve = run_serve(uri, images, args.levels, args.seconds, overrides, env)
            systems = {"ray-serve": serve}
            if args.keys:
                print(f"== {backbone}: ray-serve with API keys and a quota", flush=True)
                keyed_overrides, key = keyed(overrides, Path(tmp), backbone)
                systems["ray-serve-keys"] = run_serve(
                    uri, images, args.levels, args.seconds, keyed_overrides, env, key,
                    photos=False,
                )  # fmt: skip
            for mode in [] if args.no_baseline else args.baselines:
                for threads in args.baseline_threads:
                    print(f"== {backbone}: baseline ({mode}, {threads} threads)", flush=True)
                    key = "baseline" if mode == "lockfree" else f"baseline-{mode}"
                    key += "" if threads == args.baseline_threads[0] else f"-{threads}t"
                    systems[key] = run_baseline(
                        uri, images, args.levels, args.seconds, threads, mode
                    )
            results["models"][backbone] = {
                "model_limit": limit,
                "decode_limit": decode,
                "systems": systems,
            }
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / f"{args.tag}.png")
    table = markdown(results)
    (RESULTS / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
