"""Crashes: a model replica killed under load.

A Ray Train worker lost mid-run is the cluster scenario's training phase
(tests/cluster/operations_scenario.py): its node, the worker with it, is lost after the first
checkpoint, and the run resumes from that checkpoint. A SIGKILL of the worker alone on the
shared Ray proved the same path (FailureConfig, resume) and started a training run of its own:
merged there, ~57 s less."""

from __future__ import annotations

import os
import signal
import time

from tests.harness import wait_for
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import replica_pids


def test_model_replica_killed_under_load_recovers(served, figures):
    with ClosedLoopLoad(served.url, clients=6, max_seconds=90) as load:
        wait_for(lambda: load.count() > 30, 30, "traffic before the crash")
        (pid,) = replica_pids(served)["FaceAttributeModel"]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            after = [a.status for a in load.since(killed_at)]
            return len(after) >= 20 and all(s == 200 for s in after[-20:])

        wait_for(recovered, 30, "20 successful requests in a row after the crash", interval=0.2)
        recovery_s = time.time() - killed_at
    failed = [(a.end - killed_at, a.status) for a in load.failures()]
    assert replica_pids(served)["FaceAttributeModel"] != [pid]
    assert recovery_s < 30
    assert all(s in (503,) for _, s in failed), failed  # failures are clean 503s, not hangs or 500s
    figures.update(
        requests=load.count(),
        failed_in_window=len(failed),
        failed_statuses=sorted({s for _, s in failed}),
        recovered_within_s=round(recovery_s, 1),
    )
