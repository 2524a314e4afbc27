"""`serve run config.yaml` as a real subprocess answers POST /classify.

`--non-blocking`: on Ctrl-C a blocking `serve run` shuts down all of Serve, and this cluster is
shared with the other serving tests, which redeploy their own config afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests import images
from tests.harness import ROOT, deployment, wait_for

pytestmark = pytest.mark.serve


def test_serve_run_config_yaml(serve_testbed, tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    # Only what a shared test cluster forces: its HTTP port, and an absolute model path
    # (replicas resolve relative paths from the cluster's working directory).
    config["http_options"]["port"] = serve_testbed.http_port
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model["user_config"]["model_uri"] = serve_testbed.model_uri("latest")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    serve_bin = Path(sys.executable).with_name("serve")
    proc = subprocess.Popen(
        [
            str(serve_bin),
            "run",
            "--non-blocking",
            str(config_path),
            "--address",
            serve_testbed.cluster.gcs_address,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = serve_testbed.url
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        wait_for(
            lambda: httpx.get(f"{url}/metadata").json()["version"] == "v2",  # latest
            120,
            "the app from config.yaml to come up",
        )
        response = httpx.post(
            f"{url}/classify", files={"image": ("a.jpg", images.solid(images.RED), "image/jpeg")}
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"]["version"] == "v2"  # latest
        # The rollout command edits what `serve run` deployed, through the same REST API and
        # Ray's token, as it does a remote cluster's: shadow, then all traffic, to v1.
        rollout = roll_out_under_traffic(url, serve_testbed, serve_testbed.model_uri("v1"))
        assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
        assert "promoted: v1 is the stable version" in rollout.stdout
        assert httpx.get(f"{url}/metadata").json()["version"] == "v1"
    finally:
        if proc.poll() is None:
            proc.kill()


def roll_out_under_traffic(url: str, testbed, to: str) -> subprocess.CompletedProcess:
    stop = threading.Event()

    def traffic() -> None:
        image = {"image": ("a.jpg", images.solid(images.RED), "image/jpeg")}
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                client.post("/classify", files=image)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        command = [
            sys.executable, "-m", "serve_app.rollout", "--to", to, "--url", url,
            "--dashboard", testbed.cluster.dashboard_url, "--steps", "shadow,100",
            "--min-requests", "10", "--poll-s", "0.3", "--max-p99-ratio", "5",
            "--p99-slack-ms", "200",
        ]  # fmt: skip
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
    finally:
        stop.set()
        sender.join(timeout=30)
