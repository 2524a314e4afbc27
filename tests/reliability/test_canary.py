"""Shadow and canary rollouts under load, driven by the real command (python -m
serve_app.rollout) against the session's application: one that promotes, one that rolls back by
itself (a candidate that answers the opposite), one whose candidate replica is killed mid-step,
and the validation-AUROC gate. Clients must never see a failure in any of them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests import images
from tests.artifacts import write_tiny_artifact
from tests.harness import ROOT, wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import percentile, replica_pids
from tests.test_metrics import metrics_url

# Three colours: the tiny model's decisions differ between them, so agreement means something.
LOAD_IMAGES = [images.solid(c) for c in (images.RED, images.GREEN, images.BLUE)]
# Small steps for a 2-core box: ~50 answers/s, so 5% is ~2.5 candidate answers a second. The
# latency rule keeps its defaults (1.5x, 10 ms): it compares pass times, which a busy box moves
# for both versions alike (serve_app/rollout/policy.py).
FAST = ["--min-requests", "30", "--poll-s", "0.3", "--step-timeout", "90",
        "--ready-timeout", "90"]  # fmt: skip


@pytest.fixture
def store(tmp_path) -> Path:
    """Candidates in a store of their own (writing into the session store would move its
    `latest`): "same" is v1's model under another version, "opposite" flips every decision,
    "weak" has a lower validation AUROC than v1 (0.5)."""
    root = tmp_path / "store"
    write_tiny_artifact(str(root), version="same", input_size=(48, 48))
    write_tiny_artifact(str(root), version="opposite", opposite=True)
    write_tiny_artifact(str(root), version="weak", metrics={"val_auroc": 0.3})
    write_tiny_artifact(str(root), version="slow", slow=8)  # v1's answers, ~50x its pass time
    return root


def rollout_command(served, to: Path, *extra: str, report: Path | None = None) -> list[str]:
    return [
        sys.executable, "-m", "serve_app.rollout", "--to", str(to),
        "--dashboard", served.cluster.dashboard_url, "--url", served.url,
        *(["--report", str(report)] if report else []), *FAST, *extra,
    ]  # fmt: skip


def run_rollout(served, to: Path, tmp_path: Path, *extra: str) -> tuple[int, str, dict]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        rollout_command(served, to, *extra, report=report),
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        cwd=ROOT,
    )
    output = done.stdout + done.stderr
    print(output)
    return done.returncode, output, json.loads(report.read_text()) if report.exists() else {}


def rollout_state(served) -> dict:
    return served.http.get("/rollout").json()


def rollout_metrics() -> str | None:
    text = httpx.get(metrics_url(), timeout=10).text
    return (
        text if "ray_face_version_decisions_total{" in text and 'version="same"' in text else None
    )


def step_figures(report: dict) -> dict:
    return {
        s["step"]: {
            "outcome": s["outcome"],
            "candidate_answers": s["candidate"]["requests"],
            "compared": s["candidate"]["compared"],
            "agreement": s["candidate"]["agreement"],
            "candidate_p99_ms": s["candidate"]["p99_ms"],
            "stable_p99_ms": s["stable"]["p99_ms"],
            "at_s": s["at_s"],
        }
        for s in report["steps"]
    }


def test_rollout_walks_shadow_5_25_100_and_promotes_under_load(served, store, tmp_path, figures):
    """The candidate ("same": v1's model at 48x48, so another preprocessing spec too) passes
    every step; clients see v1, then both, then the candidate's version only; none fails."""
    with ClosedLoopLoad(served.url, clients=4, max_seconds=300, images=LOAD_IMAGES) as load:
        wait_for(lambda: load.count() > 20, 30, "traffic before the rollout")
        started = time.monotonic()
        code, output, report = run_rollout(served, store / "face-attributes" / "same", tmp_path)
        took = time.monotonic() - started
        n = load.count()
        wait_for(lambda: load.count() > n + 20, 30, "traffic after the rollout")
    assert code == 0, output
    assert [s["step"] for s in report["steps"]] == ["shadow", "canary-5", "canary-25", "canary-100"]
    assert all(s["outcome"] == "pass" for s in report["steps"]), report
    assert report["outcome"] == "promoted"
    assert served.metadata()["version"] == "same"
    assert rollout_state(served)["config"]["mode"] == "off"
    assert dict(load.result.statuses) == {200: load.count()}, load.result.statuses
    versions = load.result.versions
    assert versions[0] == "v1" and versions[-1] == "same" and {"v1", "same"} == set(versions)
    shadow = report["steps"][0]["candidate"]
    assert shadow["agreement"] >= 0.9 and shadow["compared"] >= 30
    # The same figures reach Prometheus through Ray's metrics agent (serve_app/common/metrics.py).
    metrics = wait_for(rollout_metrics, 60, "the rollout's metrics on Ray's endpoint", 2)
    for pattern in (
        r'ray_face_version_requests_total\{[^}]*outcome="ok"[^}]*role="candidate"[^}]*version="same"',
        r'ray_face_version_decisions_total\{[^}]*agreed="yes"[^}]*version="same"',
        r'ray_face_version_latency_seconds_bucket\{[^}]*role="stable"',
    ):
        assert re.search(pattern, metrics), pattern
    figures.update(
        requests=load.count(),
        failed=0,
        rollout_s=round(took, 1),
        client_p99_ms=round(percentile(load.result.latencies_200, 0.99) * 1000),
        steps=step_figures(report),
    )


def test_a_disagreeing_candidate_is_rolled_back_in_shadow(served, store, tmp_path, figures):
    """Every decision of "opposite" differs from v1's: the shadow step fails on agreement and
    the command rolls back by itself; clients only ever saw v1 (shadow answers are never
    returned)."""
    with ClosedLoopLoad(served.url, clients=4, max_seconds=200, images=LOAD_IMAGES) as load:
        wait_for(lambda: load.count() > 20, 30, "traffic before the rollout")
        code, output, report = run_rollout(served, store / "face-attributes" / "opposite", tmp_path)
    assert code == 1, output
    assert "agreement" in report["reason"] and report["outcome"] == "rolled back", report
    assert [s["step"] for s in report["steps"]] == ["shadow"]
    assert report["steps"][0]["candidate"]["agreement"] < 0.2
    assert dict(load.result.statuses) == {200: load.count()}, load.result.statuses
    assert set(load.result.versions) == {"v1"}
    assert served.metadata()["version"] == "v1"
    assert rollout_state(served)["config"]["mode"] == "off"
    wait_for(lambda: not replica_pids(served).get("CandidateModel"), 90, "the candidate gone")
    figures.update(
        requests=load.count(),
        failed=0,
        agreement=report["steps"][0]["candidate"]["agreement"],
        mean_abs_dp=report["steps"][0]["candidate"]["mean_abs_dp"],
        rolled_back_after_s=report["steps"][0]["at_s"],
    )


def test_candidate_replica_killed_mid_canary_stops_the_rollout(served, store, tmp_path, figures):
    """SIGKILL the candidate's replica while it answers half the requests: each request it
    fails is answered by the stable instead (clients see no failure), and the rollout stops,
    rolls back and says why."""
    command = rollout_command(
        served, store / "face-attributes" / "same", "--steps", "shadow,50,100",
        "--min-requests", "400", report=tmp_path / "report.json",
    )  # fmt: skip
    with ClosedLoopLoad(served.url, clients=4, max_seconds=300, images=LOAD_IMAGES) as load:
        wait_for(lambda: load.count() > 20, 30, "traffic before the rollout")
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
            cwd=ROOT,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        wait_for(
            lambda: rollout_state(served)["config"]["step"].endswith("/canary-50"),
            180,
            "the canary-50 step",
        )
        time.sleep(1.0)  # the candidate answers half the requests now
        (pid,) = replica_pids(served)["CandidateModel"]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = proc.wait(timeout=180)
        stopped_s = time.monotonic() - killed_at
        reader.join(timeout=10)
    output = "".join(lines)
    print(output)
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1, output
    assert report["outcome"] == "rolled back", report
    assert report["steps"][-1]["step"] == "canary-50"
    assert "failed" in report["reason"] or "no running replica" in report["reason"], report
    assert dict(load.result.statuses) == {200: load.count()}, load.result.statuses
    assert served.metadata()["version"] == "v1"
    figures.update(
        requests=load.count(),
        failed=0,
        reason=report["reason"],
        stopped_after_kill_s=round(stopped_s, 1),
        client_p99_ms=round(percentile(load.result.latencies_200, 0.99) * 1000),
    )


def test_a_slower_candidate_is_rolled_back_on_its_pass_times(served, store, tmp_path, figures):
    """ "slow" answers as v1 does (agreement 100%) but each forward pass costs ~50x v1's: the
    latency rule at its defaults (p99 1.5x the stable's and 10 ms more, per pass at equal or
    the nearest batch sizes) rolls it back in shadow; clients only ever saw v1."""
    with ClosedLoopLoad(served.url, clients=4, max_seconds=200, images=LOAD_IMAGES) as load:
        wait_for(lambda: load.count() > 20, 30, "traffic before the rollout")
        code, output, report = run_rollout(served, store / "face-attributes" / "slow", tmp_path)
    assert code == 1, output
    assert report["outcome"] == "rolled back" and "pass time" in report["reason"], report
    assert report["steps"][0]["candidate"]["agreement"] >= 0.9  # right answers, just slow
    assert load.failures() == [], load.describe_failures()
    assert set(load.versions()) == {"v1"}
    figures.update(reason=report["reason"], rolled_back_after_s=report["steps"][0]["at_s"])


def test_a_candidate_ray_cannot_place_is_refused_fast_and_nothing_stays_up(served, store, tmp_path):
    """A candidate asking for more CPUs than the cluster has: the rollout reads Ray's own
    reason (Serve's pending-allocation message) and exits 2 within 90 s, rolled back."""
    from tests.harness import deployment

    config = served.base_config()
    deployment(config["applications"][0], "CandidateModel")["ray_actor_options"]["num_cpus"] = 64
    served.deploy(config)
    try:
        started = time.monotonic()
        code, output, _ = run_rollout(served, store / "face-attributes" / "same", tmp_path)
        took = time.monotonic() - started
        assert code == 2, output
        assert took < 90, took
        assert 'CandidateModel needs {"CPU": 64.0}' in output, output
        assert rollout_state(served)["config"]["mode"] == "off"
        scaling = served.client.get_serve_details()["applications"]["face-attributes"]
        candidate = scaling["deployments"]["CandidateModel"]
        assert candidate["deployment_config"]["autoscaling_config"]["min_replicas"] == 0
    finally:
        served.deploy(served.base_config())


def test_gate_refuses_a_candidate_with_lower_validation_auroc(served, store, tmp_path):
    before = served.client.get_serve_details()["applications"]["face-attributes"]
    code, output, _ = run_rollout(served, store / "face-attributes" / "weak", tmp_path)
    assert code == 2, output
    assert "validation AUROC 0.3000 is below the serving version v1's 0.5000" in output
    after = served.client.get_serve_details()["applications"]["face-attributes"]
    assert after["deployed_app_config"] == before["deployed_app_config"]  # nothing was touched
