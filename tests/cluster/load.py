"""A bounded closed-loop HTTP load for the cluster scenarios: what each client saw, per request.

Every request has a timeout (``timeout_s``): a request still unanswered by then is recorded as
``"timeout"`` (a hang, as a client would see it), a refused or dropped connection as
``"connection_error"``; an HTTP answer as its status code, with its Retry-After header.
Threads, not asyncio: a few clients on loopback, and the scenario's own polling runs meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import httpx

SLOW_S = 2.0  # an answer slower than this is not "normal service" (answers take ~0.1 s here)


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it: wall-clock end (time.time()), latency, outcome."""

    end: float
    latency_s: float
    status: int | str  # an HTTP status, "timeout" or "connection_error"
    retry_after: str | None
    error_code: str | None  # the JSON body's "error" field of a non-200 answer


class ClosedLoopLoad:
    """``clients`` threads, each posting ``image`` to ``url`` in a loop until stop() (or
    ``max_seconds``), one request at a time, each bounded by ``timeout_s``."""

    def __init__(
        self,
        url: str,
        image: bytes,
        clients: int,
        timeout_s: float = 10.0,
        max_seconds: float = 180.0,
    ):
        self.url = url
        self.image = image
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + max_seconds
        self.started_at = 0.0
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> ClosedLoopLoad:
        self.started_at = time.time()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.end >= t]

    def _client(self) -> None:
        files = {"image": ("face.jpg", self.image, "image/jpeg")}
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                start = time.time()
                retry_after = error_code = None
                try:
                    r = http.post(self.url, files=files)
                    status: int | str = r.status_code
                    retry_after = r.headers.get("retry-after")
                    if status != 200:
                        error_code = _error_code(r)
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.TransportError:
                    status = "connection_error"
                    time.sleep(0.05)  # a refused connection returns at once: no busy loop
                if status == 503:
                    time.sleep(0.05)  # as a polite client (tests/reliability/helpers.py)
                end = time.time()
                with self._lock:
                    self.answers.append(Answer(end, end - start, status, retry_after, error_code))


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("error")
    except ValueError:
        return None


def summarise(answers: list[Answer], event_at: float) -> dict:
    """What clients saw around an event (e.g. a node's loss at ``event_at``, wall clock).

    Shape: {"answers", "statuses": {status: n}, "failures": [{t, status, latency_s,
    retry_after, error}], "worst_failure_latency_s", "recovered_after_s"}. recovered_after_s:
    from the event to the end of the last non-200 answer (0 if none failed): after it every
    answer was 200."""
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    failures = [a for a in answers if a.status != 200]
    late = [a for a in answers if a.status != 200 or a.latency_s > SLOW_S]
    last_bad = max((a.end for a in late), default=event_at)
    oks = [a.latency_s for a in answers if a.status == 200]
    return {
        "answers": len(answers),
        "statuses": statuses,
        "failures": [
            {**asdict(a), "t": round(a.end - event_at, 2), "latency_s": round(a.latency_s, 3)}
            for a in failures
        ],
        "worst_failure_latency_s": round(max((a.latency_s for a in failures), default=0.0), 3),
        "slowest_200_s": round(max(oks, default=0.0), 3),
        "slow_200s": sum(1 for a in late if a.status == 200),
        "recovered_after_s": round(max(0.0, last_bad - event_at), 1),
    }
