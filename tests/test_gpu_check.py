"""`make gpu-check` (bench/gpu_check.py) keeps working on a machine without a GPU.

The smoke test runs the real command (model-only variants, a `serve run` with decoding on the
model replica, the path the targets read, a Ray Train run) in its CPU profile and checks every
section of the JSON it writes, so the GPU check cannot rot between the rare runs on a GPU box.
The others check, without Ray, that a CPU run can never be labelled as a GPU one and that the
utilisation sampler reads nvidia-smi's CSV.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_util import UtilSampler

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_the_check_is_a_labelled_cpu_smoke_run():
    args = gpu_check.build_parser().parse_args([])
    settings = gpu_check.settings_from(args, has_cuda=False)
    assert settings["label"] == "cpu-smoke"
    assert settings["device"] == "cpu" and not settings["gpu"]
    assert settings["util_command"] == "none"
    assert settings["tag"] == "gpu-check-cpu-smoke"  # never overwrites gpu-check.json


def test_with_cuda_the_defaults_are_the_gpu_profile():
    settings = gpu_check.settings_from(gpu_check.build_parser().parse_args([]), has_cuda=True)
    assert settings["label"] == "gpu" and settings["device"] == "cuda"
    assert settings["serve_config"] == "config.gpu.yaml"
    assert settings["batch_sizes"][-1] == 256 and settings["levels"][-1] == 256
    assert "--use-gpu" in settings["train_args"] and "16-mixed" in settings["train_args"]
    smoke = gpu_check.settings_from(gpu_check.build_parser().parse_args(["--smoke"]), True)
    assert smoke["label"] == "cpu-smoke"


def test_asking_for_cuda_without_it_is_refused():
    args = gpu_check.build_parser().parse_args(["--device", "cuda"])
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.settings_from(args, has_cuda=False)


def test_util_sampler_summarises_the_busiest_gpu_after_the_warm_up(tmp_path):
    # nvidia-smi's CSV (index, utilization.gpu, memory.used), from a real subprocess: GPU 1 is
    # idle; GPU 0's first sample is inside the skipped warm-up window.
    script = tmp_path / "fake-smi.sh"
    script.write_text(
        "#!/bin/sh\necho '0, 5, 100'\necho '1, 0, 10'\nsleep 0.6\n"
        "while true; do echo '0, 50, 1000'; echo '0, 70, 1200'; echo '1, 0, 10'; "
        "echo '[N/A]'; sleep 0.1; done\n"
    )
    script.chmod(0o755)
    sampler = UtilSampler(str(script), skip_s=0.4).start()
    time.sleep(1.2)
    summary = sampler.stop()
    assert summary["busiest_gpu"] == 0
    assert summary["util_mean_pct"] == 60.0  # the 5% warm-up sample is not counted
    assert summary["util_max_pct"] == 70.0
    assert summary["memory_max_mib"] == 1200.0
    assert summary["per_gpu"]["1"]["util_max_pct"] == 0.0
    assert summary["samples"] >= 4


@pytest.mark.slow
@pytest.mark.serve
@pytest.mark.own_ray  # its own `serve run`s, before the session's Serve holds 8404/9101
def test_cpu_smoke_run_writes_every_section(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--results-dir", str(tmp_path),
         "--tag", "smoke", "--decode-on", "model"],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert results["label"] == "cpu-smoke" and results["gpu"] is False

    models = results["model_only"]
    assert models["status"] == "ok"
    entry = models["backbones"]["mobilenet_v3_small"]
    assert entry["device"] == "cpu" and entry["input_size"] == [64, 64]
    seen = {(v["name"], v["precision"]): v for v in entry["variants"]}
    assert set(seen) == {
        ("served", "float32"), ("served", "float16"), ("served", "bfloat16"),
        ("eager-channels-last", "float16"), ("torch.compile", "float16"),
    }  # fmt: skip
    for v in seen.values():
        assert v["status"] == "ok", v
        assert [r["batch"] for r in v["rows"]] == [1, 2, 4]
        assert all(r["images_per_s"] > 0 and r["batch_latency_ms"] > 0 for r in v["rows"])
    for name in ("eager-channels-last", "torch.compile"):  # the same weights as the artifact
        assert seen[(name, "float16")]["max_abs_diff"] < 1e-2

    serve = results["serve"]
    assert serve["status"] == "ok" and serve["config"] == "config.yaml"
    runs = serve["runs"]["mobilenet_v3_small"]
    assert set(runs) == {"model"}  # the targets' path; decode on ingress is the same loop
    for decode_on, run in runs.items():
        assert run["serving"]["decode_on"] == decode_on
        assert run["serving"]["device"] == "cpu" and run["serving"]["dtype"] == "float32"
        assert [r["concurrency"] for r in run["levels"]] == [1, 2]
        for row in run["levels"]:
            assert row["errors"] == 0 and row["throughput_rps"] > 0, row

    assert results["gpu_util"] == {
        "status": "skipped", "reason": "no GPU: cpu-smoke run",
        "section_s": results["gpu_util"]["section_s"],
    }  # fmt: skip

    training = results["training"]
    assert training["status"] == "ok", training
    assert training["wall_s"] > 0 and training["use_gpu"] is False
    assert training["precision"] == "bf16-mixed"
    assert 0.0 <= training["val_auroc"] <= 1.0 and 0.0 <= training["test_auroc"] <= 1.0

    names = [t["name"] for t in results["targets"]]
    assert len(names) == 3, names
    assert all(t["value"] is not None and t["met"] in (True, False) for t in results["targets"])

    table = (tmp_path / "smoke.md").read_text()
    assert "No GPU in this run" in table and "cpu-smoke" in table
