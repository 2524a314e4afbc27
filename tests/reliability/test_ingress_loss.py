"""The only Ingress replica killed under load, on one node, behind HAProxy (serve.env's fast
path): issue 14's ingress node loss without the local cluster.

Old guard (Ray's HAProxy config as rendered): the 4 requests in flight lost their connection and
every other request was held by Serve's fallback proxy until the replacement replica registered
(11.2 s, past the clients' 10 s timeout). serve_app/haproxy_guard.py's fail_fast answers them 503
model_unavailable with Retry-After at once.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests import images
from tests.cluster.load import ClosedLoopLoad, summarise
from tests.harness import wait_for
from tests.reliability.helpers import replica_pids

FAST_S = 2.0  # a refusal, not a wait for the replacement (tests/cluster: the same bound)
SLOWEST_S = 5.0  # no answer at all may wait for the replacement (11 s here)


def test_only_ingress_replica_killed_under_load_clients_get_fast_503s(served, figures):
    (pid,) = replica_pids(served)["Ingress"]
    with ClosedLoopLoad(
        f"{served.url}/classify", images.solid(), clients=4, max_seconds=90
    ) as load:
        wait_for(lambda: len(load.since(0)) > 20, 30, "answers before the kill")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            after = load.since(killed_at)
            return len(after) > 20 and all(a.status == 200 for a in after[-20:])

        wait_for(recovered, 60, "20 answers in a row 200 after the kill", interval=0.5)
    summary = summarise(load.since(killed_at), killed_at)
    bad = [
        f
        for f in summary["failures"]
        if f["status"] != 503 or f["retry_after"] is None or f["latency_s"] > FAST_S
        or f["error_code"] != "model_unavailable"
    ]  # fmt: skip
    assert not bad, json.dumps({"statuses": summary["statuses"], "first_bad": bad[:5]})
    slowest = max(a.latency_s for a in load.since(killed_at))
    assert slowest < SLOWEST_S, summary
    assert replica_pids(served)["Ingress"] != [pid]
    figures.update(
        statuses=summary["statuses"],
        worst_failure_latency_s=summary["worst_failure_latency_s"],
        slowest_answer_s=round(slowest, 2),
        all_200_again_after_s=summary["recovered_after_s"],
    )
