"""Far more concurrent clients than capacity for a bounded time: the excess gets fast 503s with
Retry-After, every accepted request succeeds, replica memory stays flat."""

from __future__ import annotations

import time

from tests import images
from tests.harness import deployment
from tests.load import ClosedLoopLoad
from tests.reliability.helpers import percentile, replica_pids, rss_mb


def test_overload_sheds_fast_and_accepted_requests_succeed(served, figures):
    config = served.base_config(max_batch_size=4, batch_wait_timeout_s=0.01)
    # Two bounded queues shed load: images waiting in the ingress for a model call, and calls
    # waiting at the model deployment.
    config["applications"][0]["args"]["max_waiting_images"] = 8
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model.update(max_ongoing_requests=2, max_queued_requests=1)
    served.deploy(config)
    try:
        pids = replica_pids(served)
        rss_before = {name: round(sum(rss_mb(p) for p in ps)) for name, ps in pids.items()}
        photo = images.solid(size=(1280, 960))
        with ClosedLoopLoad(served.url, clients=48, images=photo, max_seconds=60) as load:
            time.sleep(15)
        result = load.result
        rss_after = {name: round(sum(rss_mb(p) for p in ps)) for name, ps in pids.items()}
    finally:
        served.deploy(served.base_config())

    statuses = dict(result.statuses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.get(503, 0) > 0, "the load never exceeded capacity"
    assert statuses.get(200, 0) > 0
    assert result.bad_503 == 0, "every 503 carries Retry-After"
    p50_503 = percentile(result.latencies_503, 0.5)
    p50_200 = percentile(result.latencies_200, 0.5)
    # Shedding is fast: quicker than serving, and well under a second even on a saturated box.
    assert p50_503 < min(1.0, p50_200), f"p50 of 503s {p50_503:.3f}s vs 200s {p50_200:.3f}s"
    for name in rss_before:
        assert rss_after[name] < rss_before[name] * 1.5 + 100, (name, rss_before, rss_after)
    figures.update(
        clients=48,
        seconds=15,
        statuses=statuses,
        accepted_p50_ms=round(percentile(result.latencies_200, 0.5) * 1000),
        accepted_p99_ms=round(percentile(result.latencies_200, 0.99) * 1000),
        shed_p50_ms=round(p50_503 * 1000, 1),
        shed_p99_ms=round(percentile(result.latencies_503, 0.99) * 1000, 1),
        rss_mb_before=rss_before,
        rss_mb_after=rss_after,
    )
