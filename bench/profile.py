"""Where a request's CPU goes inside the replicas: py-spy samples of the ingress and model
replicas of a `serve run` under closed-loop load, each on-CPU sample put in one stage of the
request's path. Prints and writes bench/results/profile-TAG.{json,md}.

    python -m bench.profile [--backbone mobilenet_v3_small] [--concurrency 8] [--seconds 15]
        [--set DEPLOYMENT.KEY=VALUE] [--env NAME=VALUE] [--tag TAG]

py-spy samples Python stacks (no native frames), 100 times a second, only threads that are on
a CPU: time inside C code (torch, Pillow, the JSON encoder) is charged to the Python frame that
called it, which is what a stage is. py-spy's idea of "on a CPU" over-counts (a thread waiting
on the GIL or in some syscalls counts): the samples give each stage's SHARE of a replica, and
the replica's CPU seconds come from /proc over the same window (bench/cpu_account.py); a
stage's cost is share x that. Processes py-spy cannot read (HAProxy, GCS, raylet) are in the
per-role list. The raw stacks stay in bench/results/profile-TAG/ for a look at "other".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from bench import cpu_account
from bench.artifacts import bench_artifact
from bench.run import PY, RESULTS, ROOT, per_1000, serving, shipped_env, test_images

RATE_HZ = 100
PY_SPY = str(Path(PY).with_name("py-spy"))

# (stage, substrings of a frame "function (file:line)"); the frame nearest the leaf that matches
# any rule decides, so a JSON dump inside encode_prediction is "encode", not "event loop".
STAGES = (
    ("forward", ("inference.py", "torch/nn/", "torch/jit", "_call_impl")),
    ("decode", ("decode.py", "model_decode.py", "PIL/", "torchvision/io")),
    ("multipart", ("multipart.py",)),
    ("encode response", ("encode_prediction", "json/", "responses.py", "render")),
    ("serialise", ("pickle", "serialization", "_deserialize", "serialize", "msgpack")),
    ("call batching", ("model_client.py", "batching.py")),
    (
        "hop (handle, router, replica, gRPC)",
        (
            "ray/serve/_private/router",
            "ray/serve/handle",
            "ray/serve/_private/replica",
            "grpc",
            "request_router",
            "replica_result",
        ),
    ),
    ("HTTP (uvicorn, Starlette)", ("uvicorn", "h11", "httptools", "starlette", "direct_ingress")),
    ("ingress logic", ("ingress.py",)),
    ("model replica logic", ("face_attribute_model.py",)),
    ("metrics, logging", ("metrics", "logging", "prometheus", "opencensus")),
    ("event loop", ("asyncio/", "selectors", "uvloop")),
    ("ray core", ("ray/",)),
    # A thread whose innermost Python frame is Thread.run is running its target in C: Ray's
    # and gRPC's threads.
    ("native threads (Ray, gRPC)", ("Thread.run (threading.py",)),
)
# py-spy counts an idle pool thread blocked on its queue as active: not CPU, left out.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",)


def stage_of(stack: list[str]) -> str:
    if stack and stack[-1].startswith(IDLE_LEAVES):
        return "idle"
    for frame in reversed(stack):  # leaf first
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def read_raw(path: Path) -> dict[str, int]:
    """py-spy --format raw: one "frame;frame;...;leaf COUNT" line per distinct stack."""
    stages: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stages[stage_of(stack.split(";"))] += int(count)
    return stages


def replicas(root: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for pid, (role, _) in cpu_account.snapshot(root).items():
        if role in ("ingress replica", "model replica"):
            found[role].append(pid)
    return found


def profile(url: str, image: Path, root: int, concurrency: int, seconds: float, tmp: Path):
    warmup = 3.0
    load = subprocess.Popen(
        [PY, "-m", "bench.loadgen", "--url", url, "--image", str(image), "--concurrency",
         str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup), "--server-pid", str(root)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(warmup)
    spies = []
    for role, pids in replicas(root).items():
        for pid in pids:
            out = tmp / f"{role.replace(' ', '_')}-{pid}.txt"
            cmd = [PY_SPY, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
                   "--duration", str(int(seconds)), "--output", str(out), "--nonblocking"]  # fmt: skip
            spies.append((role, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
    for _, _, spy in spies:
        spy.wait(timeout=seconds + 60)
    row = json.loads(load.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1])
    samples: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for role, out, _ in spies:
        for stage, n in read_raw(out).items():
            if stage != "idle":
                samples[role][stage] += n
    by_role = {}
    for role, stages in samples.items():
        role_per_1000 = per_1000(row, role)  # /proc
        total = max(1, sum(stages.values()))
        ranked = sorted(stages.items(), key=lambda kv: -kv[1])
        by_role[role] = {stage: role_per_1000 * n / total for stage, n in ranked}
    return row, by_role


def markdown(row: dict, by_role: dict, args: argparse.Namespace) -> str:
    lines = [
        f"{args.backbone}, c={args.concurrency}, {args.seconds:.0f} s: {row['throughput_rps']} req/s, "
        f"p50 {row['p50_ms']} ms; server {row['server_cpu_s_per_1000']} CPU-s per 1,000 requests "
        "(every process, /proc).\n",
        "| replica | stage | CPU-s per 1,000 requests (/proc total x py-spy share) |",
        "| --- | --- | --- |",
    ]  # fmt: skip
    for role, stages in by_role.items():
        lines += [f"| {role} | {stage} | {cost:.2f} |" for stage, cost in stages.items()]
        lines.append(f"| {role} | **total** | **{sum(stages.values()):.2f}** |")
    lines += ["", "/proc per role (CPU-s per 1,000 requests):", ""]
    lines += [f"- {k}: {per_1000(row, k):.2f}" for k in row["server_cpu_s_by_role"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    env = {**shipped_env(), **dict(s.split("=", 1) for s in args.env)}
    env = {k: v for k, v in env.items() if v}
    uri = bench_artifact(args.backbone)
    stacks = RESULTS / f"profile-{args.tag}"
    stacks.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images = test_images(Path(tmp))
        with serving(uri, overrides, env) as (proc, port):
            url = f"http://127.0.0.1:{port}/classify"
            row, by_role = profile(
                url, images["celeba"], proc.pid, args.concurrency, args.seconds, stacks
            )
    table = markdown(row, by_role, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "load": row, "stages_cpu_s_per_1000": by_role}
    (RESULTS / f"profile-{args.tag}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"profile-{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
