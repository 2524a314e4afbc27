"""A deploy pins the model version (serve_app/common/pin.py): once ``latest`` moves, restarted
replicas, a restarted controller and a later scale-up (tests/test_autoscaling.py and the shipped
scenario) keep serving the version the deploy resolved; only an operator's action changes it:
a deploy with another ``reload`` (or model_uri), the rollout command, or ``follow_latest``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import ray

from tests.artifacts import write_tiny_artifact
from tests.harness import APP_NAME, deployment, wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import replica_pids

pytestmark = [pytest.mark.serve, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of its own (the session's store keeps its `latest`): p1 is latest at first."""
    path = tmp_path_factory.mktemp("pin-store")
    write_tiny_artifact(str(path), version="p1")
    return path


def pointer(store) -> str:
    return str(store / APP_NAME / "latest")


def config_for(served, store, **user_config) -> dict:
    return served.base_config(model_uri=pointer(store), **user_config)


def only_clean_503s(load: ClosedLoopLoad) -> list:
    """Failures other than the fast 503 a lost replica's in-flight calls get (with Retry-After):
    none is allowed."""
    return [
        a for a in load.failures() if a.status != 503 or a.retry_after is None
    ]  # fmt: skip


def kill_model_replica(served) -> None:
    (pid,) = replica_pids(served)["FaceAttributeModel"]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: replica_pids(served)["FaceAttributeModel"] not in ([], [pid]),
        60,
        "a new model replica",
    )


def test_a_moved_latest_is_not_served_until_an_operator_says_so(served, store):
    served.deploy(config_for(served, store))
    try:
        meta = served.metadata()
        assert meta["version"] == "p1" and meta["serving"]["pin"]["version"] == "p1", meta
        write_tiny_artifact(str(store), version="p2")  # training moved `latest`: nobody deployed
        with ClosedLoopLoad(served.url, clients=4) as load:
            kill_model_replica(served)  # a node loss, an OOM, a failed health check
            wait_for(lambda: load.count() > 40, 60, "answers after the restart")
            controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
            ray.kill(controller, no_restart=False)  # the controller recovers its checkpoint
            wait_for(
                lambda: served.http.get("/readyz").status_code == 200, 60, "Serve back after it"
            )
            kill_model_replica(served)  # a replica the recovered controller starts
            seen = load.count()
            wait_for(lambda: load.count() > seen + 40, 60, "answers after the second restart")
        assert set(load.versions()) == {"p1"}, set(load.versions())
        assert only_clean_503s(load) == [], load.describe_failures()
        pin = wait_for(
            lambda: (p := served.metadata()["serving"]["pin"])["latest"] == "p2" and p,
            30,
            "the replica to see `latest` move",
        )
        assert pin["version"] == "p1" and pin["newer_available"], pin
        assert "serve_app.rollout --to latest" in pin["hint"]

        # The operator's action: a deploy with another reload resolves `latest` again.
        with ClosedLoopLoad(served.url, clients=4) as load:
            served.deploy(config_for(served, store, reload=1))
            wait_for(lambda: load.versions()[-1:] == ["p2"], 60, "answers from p2")
            seen = load.count()
            wait_for(lambda: load.count() > seen + 20, 60, "more answers")
        assert load.failures() == [], load.describe_failures()
        versions = load.versions()
        switch = versions.index("p2")
        assert set(versions[:switch]) <= {"p1"} and set(versions[switch:]) == {"p2"}
    finally:
        served.deploy(served.base_config())


def test_a_refused_artifact_is_retried_after_a_reload_change(served, store, tmp_path):
    """The operator fixes a refused artifact and deploys the same config: Serve sees no change
    and no replica looks again; changing user_config.reload makes them look."""
    broken = store / APP_NAME / "p3"
    if not broken.exists():
        shutil.copytree(store / APP_NAME / "p1", broken)
    metadata = broken / "metadata.json"
    good = json.loads(metadata.read_text())  # a copy of p1's: the version inside says p1
    edited = {**good, "threshold": 0.25}  # an edit after export: the digest no longer matches
    metadata.write_text(json.dumps(edited))
    served.deploy(served.base_config())  # serving v1
    config = served.base_config(model_uri=str(broken))
    try:
        served.client.deploy_applications(config)
        last_error = wait_for(
            lambda: served.metadata()["serving"]["last_error"], 60, "the refusal in /metadata"
        )
        assert "digest mismatch" in last_error and "user_config.reload" in last_error
        assert str(store) not in last_error  # paths stay private
        assert served.metadata()["version"] == "v1"
        metadata.write_text(json.dumps(good))  # fixed
        served.client.deploy_applications(config)  # the same config again: nothing happens
        time.sleep(5)
        assert served.metadata()["version"] == "v1"
        retry = served.base_config(model_uri=str(broken), reload=1)
        served.deploy(retry)
        pin = served.metadata()["serving"]["pin"]
        assert served.metadata()["serving"]["last_error"] is None
        assert pin["version"] == "p3" and pin["reload"] == 1 and pin["serves_pinned"], pin
    finally:
        served.deploy(served.base_config())


def test_follow_latest_switches_every_replica_together(served, store):
    """follow_latest: on, by choice: two replicas load the new version beside the old one and
    swap at the same moment (no mixed answers outside a short window)."""
    config = config_for(served, store, follow_latest=True)
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model["autoscaling_config"].update(min_replicas=2, initial_replicas=2, max_replicas=2)
    served.deploy(config)
    try:
        before = served.metadata()["version"]
        new = f"f{int(time.time())}"
        with ClosedLoopLoad(served.url, clients=4) as load:
            time.sleep(1)
            write_tiny_artifact(str(store), version=new)
            wait_for(lambda: load.versions()[-1:] == [new], 60, "answers from the new version")
            seen = load.count()
            wait_for(lambda: load.count() > seen + 40, 60, "more answers")
        assert load.failures() == [], load.describe_failures()
        answers = [a for a in load.answers if a.status == 200]
        last_old = max(a.end for a in answers if a.version == before)
        first_new = min(a.end for a in answers if a.version == new)
        assert {a.version for a in answers} == {before, new}
        # Together: the replicas swap at the pin's switch_at; answers overlap only by the
        # requests in flight at that moment.
        assert last_old - first_new < 1.0, (last_old - first_new, before, new)
    finally:
        served.deploy(served.base_config())
