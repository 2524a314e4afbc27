"""The suite's one load client: closed-loop HTTP clients that record every outcome.

Each request ends as exactly one ``Answer``: an HTTP status (with its Retry-After, its JSON
``error`` code, and the ``model.version`` of a 200), or ``"timeout"`` (unanswered within
``timeout_s``: a hang, as a client sees it), ``"connection_error"`` (refused, reset, closed
without an answer), ``"bad_body"`` (a 200 whose body is not the API's JSON) or
``"client_error"`` (anything else raised in the client itself). Nothing is dropped: a client
thread records what went wrong and carries on, so a "zero failures" assertion on
``failures()`` sees every request. tests/test_load_client.py injects each kind of failure.

Threads, not asyncio: a few clients on loopback while the test itself polls meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

SLOW_S = 2.0  # an answer slower than this is not "normal service" (answers take ~0.1 s here)
TRANSPORT_FAILURES = ("timeout", "connection_error", "bad_body", "client_error")


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it: wall-clock end (time.time()), latency, outcome."""

    end: float
    latency_s: float
    status: int | str  # an HTTP status, or one of TRANSPORT_FAILURES
    retry_after: str | None = None
    error_code: str | None = None  # the JSON body's "error" of a non-200 answer
    version: str | None = None  # the JSON body's model.version of a 200
    detail: str | None = None  # what a transport failure was, for the assertion message


@dataclass
class LoadResult:
    """The answers, summed the way the reliability tests read them."""

    statuses: Counter = field(default_factory=Counter)
    latencies_200: list[float] = field(default_factory=list)
    latencies_503: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    bad_503: int = 0  # 503s without Retry-After


def default_request(http: httpx.Client, path: str, image: bytes) -> httpx.Response:
    return http.post(path, files={"image": ("face.jpg", image, "image/jpeg")})


class ClosedLoopLoad:
    """``clients`` threads, each sending ``images`` in turn to ``base_url`` + ``path`` until
    stop() (or ``max_seconds``), one request at a time, each bounded by ``timeout_s``."""

    def __init__(
        self,
        base_url: str,
        clients: int,
        images: list[bytes] | bytes | None = None,
        path: str = "/classify",
        timeout_s: float = 30.0,
        max_seconds: float = 180.0,
        headers: dict[str, str] | None = None,
        request: Callable[[httpx.Client, str, bytes], httpx.Response] = default_request,
    ):
        from tests import images as test_images

        if isinstance(images, bytes):
            images = [images]
        self.images = images or [test_images.solid()]
        self.base_url, self.path, self.timeout_s = base_url, path, timeout_s
        self.headers = headers or {}
        self.request = request
        self.deadline = time.monotonic() + max_seconds
        self.started_at = 0.0
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

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

    # ---- views --------------------------------------------------------------------------------

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.end >= t]

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def failures(self, allowed: tuple[int | str, ...] = ()) -> list[Answer]:
        """Every answer that is not a 200 (nor one of ``allowed``)."""
        with self._lock:
            return [a for a in self.answers if a.status != 200 and a.status not in allowed]

    def versions(self) -> list[str]:
        with self._lock:
            return [a.version for a in self.answers if a.status == 200 and a.version]

    @property
    def result(self) -> LoadResult:
        out = LoadResult()
        with self._lock:
            answers = list(self.answers)
        for a in answers:
            out.statuses[a.status] += 1
            if a.status == 200:
                out.latencies_200.append(a.latency_s)
                if a.version:
                    out.versions.append(a.version)
            elif a.status == 503:
                out.latencies_503.append(a.latency_s)
                out.bad_503 += a.retry_after is None
        return out

    def describe_failures(self, limit: int = 8) -> str:
        failures = self.failures()
        counts = Counter(str(a.status) for a in failures)
        return f"{len(failures)} failed of {self.count()}: {dict(counts)}; first: " + "; ".join(
            f"{a.status} {a.error_code or a.detail or ''}".strip() for a in failures[:limit]
        )

    # ---- one client ---------------------------------------------------------------------------

    def _client(self, index: int) -> None:
        with httpx.Client(
            base_url=self.base_url, timeout=self.timeout_s, headers=self.headers
        ) as h:
            sent = 0
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                image = self.images[(index + sent) % len(self.images)]
                sent += 1
                answer = self._one(h, image)
                with self._lock:
                    self.answers.append(answer)
                if answer.status in (503, "connection_error"):
                    time.sleep(0.05)  # a polite client backs off; a refusal returns at once

    def _one(self, http: httpx.Client, image: bytes) -> Answer:
        start = time.time()
        try:
            r = self.request(http, self.path, image)
        except httpx.TimeoutException as e:
            return Answer(time.time(), time.time() - start, "timeout", detail=type(e).__name__)
        except httpx.TransportError as e:
            return _failed(start, "connection_error", e)
        except Exception as e:  # the client's own bug: recorded, never a silent dead thread
            return _failed(start, "client_error", e)
        end = time.time()
        retry_after = r.headers.get("retry-after")
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code == 200:
            version = _version(body)
            if body is None:
                return Answer(end, end - start, "bad_body", detail=r.text[:80])
            return Answer(end, end - start, 200, retry_after, version=version)
        code = body.get("error") if isinstance(body, dict) else None
        return Answer(end, end - start, r.status_code, retry_after, code, detail=r.text[:80])


def _failed(start: float, status: str, error: Exception) -> Answer:
    return Answer(time.time(), time.time() - start, status, detail=f"{type(error).__name__}")


def _version(body: object) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("model"), dict):
        return body["model"].get("version")
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
