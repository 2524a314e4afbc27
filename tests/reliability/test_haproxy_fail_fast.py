"""What clients see through HAProxy when the only Ingress replica dies (issue 14's ingress node
loss, its HAProxy half, on a rig that needs no Ray): the config Ray 2.60 renders (its own
template and code), started through serve_app/haproxy_guard.py as Serve starts it, the real
haproxy binary, a stand-in replica (answers after 0.3 s) and a stand-in fallback proxy (holds every
request 10 s, as Serve's proxy did while no Ingress replica existed). 4 keep-alive clients post
a small image in a loop; the replica is SIGKILLed mid-request.

Before the guard's fail_fast (Ray's config as rendered): the 4 requests in flight lost their
connection (HAProxy closes a client's connection without an answer when a reused server
connection fails) and the next 4 were held by the fallback until the clients' timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, free_port, wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.haproxy_rig import UPSTREAM, render_rays_config

GUARD = ROOT / "serve_app" / "haproxy_guard.py"
HOLD_S = 10.0  # the stand-in fallback's wait, as Serve's proxy waited for a new Ingress replica
CLIENT_TIMEOUT_S = 5.0
FAST_S = 2.0  # as tests/cluster/test_cluster_operations.py: a refusal, not a wait


@pytest.fixture
def rig(tmp_path):
    """(url, {name: process}): haproxy started through the guard in front of the stand-ins."""
    # A short directory: haproxy's unix socket paths are bounded (pytest's tmp_path can be long).
    directory = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
    port, replica_port, fallback_port = free_port(), free_port(), free_port()
    config = render_rays_config(directory, port, replica_port, fallback_port)
    upstream = [sys.executable, "-c", UPSTREAM]
    procs = {
        "replica": subprocess.Popen([*upstream, str(replica_port), "0.3"]),
        "fallback": subprocess.Popen([*upstream, str(fallback_port), str(HOLD_S)]),
    }
    with open(tmp_path / "haproxy.log", "w") as log:
        procs["haproxy"] = subprocess.Popen(
            [sys.executable, str(GUARD), "-db", "-f", str(config)], stdout=log, stderr=log
        )
    try:
        healthz = f"http://127.0.0.1:{port}/-/healthz"
        wait_for(lambda: httpx.get(healthz).status_code == 200, 20, "haproxy up")
        yield f"http://127.0.0.1:{port}", procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_only_ingress_replica_killed_clients_get_fast_503s_not_resets_or_waits(rig, figures):
    url, procs = rig
    # 4 keep-alive clients (the suite's load client: every outcome recorded, a non-JSON error
    # page included), each request bounded by CLIENT_TIMEOUT_S.
    with ClosedLoopLoad(url, clients=4, timeout_s=CLIENT_TIMEOUT_S, max_seconds=60) as load:
        wait_for(lambda: load.result.statuses[200] >= 8, 20, "answers before the kill")
        killed_at = time.time()
        os.kill(procs["replica"].pid, signal.SIGKILL)
        time.sleep(1.5)
    after = load.since(killed_at)
    failures = [a for a in after if a.status != 200]
    statuses = {str(s): sum(a.status == s for a in after) for s in {a.status for a in after}}
    bad = [
        a
        for a in failures
        if a.status != 503 or a.retry_after is None or a.latency_s > FAST_S
        or a.error_code != "model_unavailable"
    ]  # fmt: skip
    assert failures and not bad, json.dumps(
        {"statuses": statuses, "bad": [a.__dict__ for a in bad[:6]]}
    )
    figures.update(
        statuses=statuses,
        worst_failure_latency_s=round(max(a.latency_s for a in failures), 3),
    )
