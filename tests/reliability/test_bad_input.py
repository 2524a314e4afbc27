"""More than 1,000 malformed uploads: every one a 4xx JSON error (or a 200 where the bytes
still decode), never a 5xx, no replica restart, and a good image is answered afterwards."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import Counter

import httpx

from tests import images
from tests.reliability.helpers import replica_ids
from tests.reliability.malformed import generate, slow_body


def send(url: str, kwargs: dict) -> tuple[int, dict | None]:
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/classify", **kwargs)
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body


def test_malformed_uploads_get_4xx_json_and_nothing_restarts(served, figures):
    before = replica_ids(served)
    cases = list(generate(seed=0, limit_bytes=1024 * 1024))
    assert len(cases) >= 1000
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda case: (case, send(served.url, case[1])), cases))
    elapsed = time.perf_counter() - start

    by_status: Counter = Counter()
    problems = []
    for (category, _, decodable), (status, body) in outcomes:
        by_status[status] += 1
        if status >= 500:
            problems.append(f"{category}: {status} {body}")
        elif status == 200:
            if not decodable:
                problems.append(f"{category}: 200 for bytes Pillow cannot decode")
        elif not (400 <= status < 500 and body and body.get("error") and body.get("detail")):
            problems.append(f"{category}: {status} without a JSON error body: {body}")
    assert problems == [], problems[:10]

    # Slow uploads: a few bytes at a time still get a proper answer.
    slow = [
        send(
            served.url,
            {
                "content": slow_body(b"\x00junk" * 2000, chunks=8, pause_s=0.15),
                "headers": {"content-type": "image/jpeg"},
            },
        )
        for _ in range(3)
    ]
    assert all(status == 400 and body["error"] == "undecodable_image" for status, body in slow)
    good = send(
        served.url, {"files": {"image": ("ok.jpg", images.solid(size=(200, 300)), "image/jpeg")}}
    )
    assert good[0] == 200

    assert replica_ids(served) == before, "a replica restarted"
    figures.update(
        uploads=len(cases) + len(slow),
        seconds=round(elapsed, 1),
        per_second=round(len(cases) / elapsed, 1),
        statuses=dict(sorted(by_status.items())),
        decodable_despite_damage=sum(1 for (_, _, d), _ in outcomes if d),
        five_xx=0,
        replica_restarts=0,
    )
