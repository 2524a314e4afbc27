"""In-process cost of the ingress's HTTP path per /classify, no Ray: without API keys, with keys
(serve_app/ingress/auth.py: hash + lookup), and with keys and a quota (token buckets).

    python -m bench.api_overhead [--repeat 7] [--number 4000] [--out FILE.json]

The model call is a stub that returns a Prediction of 40 labels at once, so what is timed is the
ingress's own work: routing, the key check, reading the multipart body, encoding the answer and
the JSON response. Each figure is the best of --repeat timings of --number calls, the three
variants interleaved round by round (a shared box disturbs them alike), in microseconds per
call. End to end, the same comparison at c=32: bench/run.py --keys (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.common.protocol import Prediction
from train_job.celeba import ATTRIBUTES

BOUNDARY = "bench0boundary0x"


def prediction() -> Prediction:
    """40 labels, about half above 0.5 (an untrained model answers near 0.5)."""
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.2, 0.8, len(ATTRIBUTES)).astype(np.float32)
    thresholds = rng.uniform(0.1, 0.9, len(ATTRIBUTES)).astype(np.float32)
    return Prediction("bench", "v1", tuple(ATTRIBUTES), 0.5, probs, thresholds)


def multipart_body(image: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="face.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def request(body: bytes, key: str | None) -> Any:
    """A fresh Starlette Request of POST /classify carrying ``body`` (its stream is one-shot)."""
    from starlette.requests import Request

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http", "method": "POST", "path": "/classify", "raw_path": b"/classify",
        "root_path": "", "scheme": "http", "query_string": b"", "headers": headers,
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555),
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def ingress(args: dict[str, Any], answer: Prediction) -> Any:
    """The Ingress class (not the Serve deployment) with the model call stubbed."""
    from serve_app.ingress.deployment import Ingress

    instance = Ingress.func_or_class(model=object(), args=args)
    instance._reading_rollout = True  # no monitor to push to

    async def predict(image: bytes, *routing: Any) -> Prediction:
        return answer

    instance._predict = predict
    return instance


def timed_us(call: Callable[[], Awaitable[Any]], number: int) -> float:
    async def loop() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await call()
        return time.perf_counter() - start

    return asyncio.run(loop()) / number * 1e6


def main() -> None:
    from serve_app import keys as key_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp())
    keys_path = directory / "keys.yaml"
    key = key_file.add(keys_path, "bench")
    quota_path = directory / "quota.yaml"
    quota_key = key_file.add(quota_path, "bench", rps=1e9, per_minute=10**12)
    body = multipart_body(bytes(20_000))  # a CelebA JPEG's size; never decoded here
    answer = prediction()
    variants = {
        "no keys": (ingress({}, answer), None),
        "keys": (ingress({"api_keys_file": str(keys_path)}, answer), key),
        "keys + quota": (ingress({"api_keys_file": str(quota_path)}, answer), quota_key),
    }
    for instance, k in variants.values():  # every variant answers 200 before it is timed
        status = asyncio.run(instance(request(body, k))).status_code
        assert status == 200, status
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeat):
        for name, (instance, k) in variants.items():

            async def call(instance=instance, k=k) -> Any:
                return await instance(request(body, k))

            best[name] = min(best[name], timed_us(call, args.number))
    base = best["no keys"]
    figures = {
        name: {"us_per_call": round(us, 1), "extra_us": round(us - base, 1)}
        for name, us in best.items()
    }
    for name, row in figures.items():
        print(f"{name:14s} {row['us_per_call']:8.1f} us/call  {row['extra_us']:+6.1f} us")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
