"""In-process cost of the ingress's HTTP path per /classify, typed API (this checkout's
serve_app/ingress.py) against the hand-written one it replaced (commit 83e63fe's), no Ray.

    python -m bench.api_overhead [--old-commit 83e63fe] [--new-commit C] [--repeat 5]
        [--number 4000]

The model call is a stub that returns a Prediction of 40 labels at once, so what is timed is
exactly what the two ingresses do differently: routing, the query, reading the multipart body,
encoding the answer and the JSON response. Each line is the best of --repeat timings of
--number calls, in microseconds per call (best: the least disturbed by the other processes on
a shared box). The old module is loaded from ``git show`` under another name, next to the new.

A commit's ingress imports this checkout's other modules (--new-commit fails where they moved
on, e.g. a route in api.py it lacks); to time a commit as it was, run from a snapshot:
``git archive C | tar -x -C /tmp/snap && cd /tmp/snap && GIT_DIR=<repo>/.git python -m
bench.api_overhead`` (how docs/performance.md "The typed API's cost" timed 2e5bc60 and 301835d).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.common.protocol import Prediction
from train_job.celeba import ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "bench0boundary0x"


def load_ingress(commit: str) -> Any:
    """Commit's serve_app/ingress.py as module ``ingress_<commit>`` (imports this checkout's
    other serve_app modules, as the A/B's file swap does)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:serve_app/ingress.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"ingress_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"ingress_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prediction(tuned: bool) -> Prediction:
    """40 labels, about half above 0.5 (the benchmark's untrained model answers near 0.5)."""
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.2, 0.8, len(ATTRIBUTES)).astype(np.float32)
    thresholds = rng.uniform(0.1, 0.9, len(ATTRIBUTES)).astype(np.float32) if tuned else None
    return Prediction("bench", "v1", tuple(ATTRIBUTES), 0.5, probs, thresholds)


def multipart_body(image: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="face.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def request(body: bytes, query: str = "") -> Any:
    """A fresh Starlette Request of POST /classify carrying ``body`` (its stream is one-shot)."""
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/classify",
        "raw_path": b"/classify",
        "root_path": "",
        "scheme": "http",
        "query_string": query.encode(),
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def ingress(module: Any, answer: Prediction) -> Any:
    """The module's Ingress class (not the Serve deployment) with the model call stubbed."""
    instance = module.Ingress.func_or_class(model=object(), args={})

    async def predict(image: bytes, *routing: Any) -> Prediction:
        return answer

    instance._predict = predict
    return instance


def best_us(call: Callable[[], Awaitable[Any]], number: int, repeat: int) -> float:
    async def timed() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await call()
        return time.perf_counter() - start

    return min(asyncio.run(timed()) for _ in range(repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-commit", default="83e63fe")
    parser.add_argument(
        "--new-commit", default=None, help="a commit's ingress.py (default: this checkout's)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=4000)
    args = parser.parse_args()

    if args.new_commit:
        new = load_ingress(args.new_commit)
    else:
        import serve_app.ingress.deployment as new
    from serve_app.api.schema import DEFAULT_QUERY

    old = load_ingress(args.old_commit)
    image = bytes(20_000)  # a CelebA JPEG's size; never decoded here
    body = multipart_body(image)
    single, tuned = prediction(False), prediction(True)
    n, r = args.number, args.repeat
    rows: list[tuple[str, float, float]] = []

    def row(name: str, old_call, new_call) -> None:
        o = best_us(old_call, n, r) if old_call else float("nan")
        w = best_us(new_call, n, r)
        rows.append((name, o, w))
        print(f"{name:44s} {o:8.1f} {w:8.1f} {w - o:+8.1f}", flush=True)

    print(f"{'us per call':44s} {'old':>8s} {'new':>8s} {'new-old':>8s}")
    o_ing, n_ing = ingress(old, single), ingress(new, single)
    n_ing_tuned = ingress(new, tuned)

    async def old_route():
        return o_ing._routes.get(("POST", (request(body).url.path.rstrip("/") or "/")))

    async def new_route():
        methods = n_ing._routes.get(new.route_of(request(body).url.path))
        return methods.get("POST")

    row("request + route", old_route, new_route)

    async def request_url():
        return request(body).url

    async def request_url_query():
        r = request(body)
        assert r.url  # __call__ has built it already
        return await n_ing._classify_query(r)

    row("request + url; new: + _classify_query", request_url, request_url_query)

    async def old_read():
        return await o_ing._read_images(request(body), max_images=1)

    async def new_read():
        return await n_ing._read_images(request(body), max_images=1)

    row("request + _read_images (20 kB multipart)", old_read, new_read)

    async def old_encode():
        return old.encode_prediction(single)

    async def new_encode():
        return new.encode_prediction(single, DEFAULT_QUERY)

    async def new_encode_tuned():
        return new.encode_prediction(tuned, DEFAULT_QUERY)

    row("encode_prediction, single threshold", old_encode, new_encode)
    row("encode_prediction, tuned thresholds", None, new_encode_tuned)

    from starlette.responses import JSONResponse

    old_body, new_body = old.encode_prediction(single), new.encode_prediction(single)

    async def old_json():
        return JSONResponse(old_body)

    async def new_json():
        return JSONResponse(new_body)

    row(
        f"JSONResponse ({len(JSONResponse(old_body).body)} vs "
        f"{len(JSONResponse(new_body).body)} B)",
        old_json,
        new_json,
    )

    async def old_call():
        return await o_ing(request(body))

    async def new_call():
        return await n_ing(request(body))

    async def new_call_tuned():
        return await n_ing_tuned(request(body))

    row("__call__ POST /classify, whole", old_call, new_call)
    row("__call__ POST /classify, tuned thresholds", None, new_call_tuned)


if __name__ == "__main__":
    main()
