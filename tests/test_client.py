"""serve_app.client: against the real service (marker serve) and, for retries and query
parameters, against a small real HTTP server on this machine that answers what a test scripts."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from serve_app import client as api
from tests import images
from tests.artifacts import CELEBA_LABELS
from tests.harness import free_port

REPO = Path(__file__).resolve().parents[1]

# ---- a scripted HTTP server ----------------------------------------------------------------------

Answer = tuple[int, dict[str, str], dict]
CLASSIFIED = {
    "labels": [{"label_id": 1, "label": "B", "probability": 0.9, "threshold": 0.4}],
    "probabilities": {"A": 0.2, "B": 0.9},
    "model": {"name": "stub", "version": "s1"},
}


def ok(body: dict = CLASSIFIED) -> Answer:
    return 200, {}, body


def error(status: int, code: str, retry_after: str | None = None) -> Answer:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return status, headers, {"error": code, "detail": f"scripted {code}"}


class Seen:
    """One request as it arrived: when, its path with query, its body."""

    def __init__(self, path: str, body: bytes):
        self.at = time.monotonic()
        self.path = path
        self.body = body

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


class StubServer:
    """A real ThreadingHTTPServer; ``answer(seen, index)`` scripts each reply."""

    def __init__(self, answer: Callable[[Seen, int], Answer], port: int = 0):
        self.seen: list[Seen] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real service

            def do_GET(self):
                self._reply()

            def do_POST(self):
                self._reply()

            def _reply(self):
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(self.path, self.rfile.read(length))
                stub.seen.append(seen)
                status, headers, body = answer(seen, len(stub.seen) - 1)
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_with():
    servers: list[StubServer] = []

    def start(answer: Callable[[Seen, int], Answer], port: int = 0) -> StubServer:
        servers.append(StubServer(answer, port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def scripted(*answers: Answer) -> Callable[[Seen, int], Answer]:
    """The answers in order; the last one repeats."""
    return lambda seen, i: answers[min(i, len(answers) - 1)]


def gaps(seen: list[Seen]) -> list[float]:
    return [round(b.at - a.at, 2) for a, b in itertools.pairwise(seen)]


# ---- import ----------------------------------------------------------------------------------


def test_imports_without_ray():
    """A caller installs httpx, not the serving stack: with ray unimportable the client loads
    and ray is never imported."""
    code = (
        "import sys\n"
        "class NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('ray is not installed here')\n"
        "sys.meta_path.insert(0, NoRay())\n"
        "import serve_app.client as c\n"
        "assert c.Client and c.AsyncClient\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_clients_types_are_the_apis_own_and_every_error_code_has_its_class():
    """One source: the client's results are serve_app/api/schema.py's models, and each code the
    API can answer (ERROR_CODES) maps to a class of its status."""
    from serve_app.api import schema

    assert issubclass(api.Classification, schema.ClassifyResult)
    assert issubclass(api.Faces, schema.FacesResult)
    assert api.Label is schema.LabelEntry and api.ModelRef is schema.ModelRef
    for status, codes in schema.ERROR_CODES.items():
        for code in codes:
            cls = api.ERROR_CLASSES.get(code)
            assert cls is not None, f"no client class for {code}"
            assert cls.default_status in (status, 400 if status == 400 else status), (code, cls)


# ---- retries (scripted server) ---------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after_then_raises_rate_limited(stub_with):
    """A key over its quota: wait as asked (it is "come back later", as a 503), and once the
    budget is spent raise RateLimited saying how long the server asked for."""
    stub = stub_with(scripted(error(429, "rate_limited", "1"), ok()))
    with api.Client(stub.url, retries=3, max_retry_wait_s=10) as client:
        assert client.classify(images.solid()).model.version == "s1"
    assert len(stub.seen) == 2 and 0.95 <= gaps(stub.seen)[0] < 1.6
    stub = stub_with(scripted(*[error(429, "rate_limited", "1")] * 3))
    client = api.Client(stub.url, retries=1, max_retry_wait_s=10)
    with client, pytest.raises(api.RateLimited) as raised:
        client.classify(images.solid())
    assert raised.value.retry_after == 1 and raised.value.status == 429


def test_waits_retry_after_between_503s(stub_with):
    stub = stub_with(scripted(error(503, "overloaded", "1"), error(503, "overloaded", "1"), ok()))
    with api.Client(stub.url, retries=3, max_retry_wait_s=10) as client:
        result = client.classify(images.solid())
    assert result.labels == [api.Label(label_id=1, label="B", probability=0.9, threshold=0.4)]
    assert result.model == api.ModelRef(name="stub", version="s1")
    assert len(stub.seen) == 3
    assert all(0.95 <= gap < 1.6 for gap in gaps(stub.seen)), gaps(stub.seen)


def test_async_client_waits_retry_after(stub_with):
    stub = stub_with(scripted(error(503, "model_unavailable", "1"), ok()))

    async def classify():
        async with api.AsyncClient(stub.url, retries=3) as client:
            return await client.classify(images.solid())

    assert asyncio.run(classify()).probabilities == {"A": 0.2, "B": 0.9}
    assert len(stub.seen) == 2
    assert 0.95 <= gaps(stub.seen)[0] < 1.6, gaps(stub.seen)


def test_retry_after_longer_than_the_budget_ends_at_once(stub_with):
    stub = stub_with(scripted(error(503, "overloaded", "5"), ok()))
    start = time.monotonic()
    with (
        api.Client(stub.url, retries=3, max_retry_wait_s=2) as client,
        pytest.raises(api.Overloaded) as raised,
    ):
        client.classify(images.solid())
    assert time.monotonic() - start < 1.0
    assert raised.value.retry_after == 5
    assert raised.value.status == 503 and raised.value.code == "overloaded"
    assert len(stub.seen) == 1


def test_overloaded_when_retries_run_out(stub_with):
    stub = stub_with(scripted(error(503, "model_unavailable", "0")))
    with api.Client(stub.url, retries=2) as client, pytest.raises(api.Overloaded) as raised:
        client.classify(images.solid())
    assert type(raised.value) is api.ModelUnavailable
    assert len(stub.seen) == 3  # the first try and 2 retries


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "undecodable_image", api.ImageRejected),
        (400, "empty_image", api.ImageRejected),
        (400, "bad_multipart", api.BadMultipart),
        (413, "payload_too_large", api.PayloadTooLarge),
        (413, "too_many_images", api.TooManyImages),
        (415, "unsupported_media_type", api.UnsupportedMediaType),
        (422, "unknown_attribute", api.UnknownAttribute),
        (422, "invalid_query", api.InvalidQuery),
        (422, "missing_image", api.MissingImage),
        (401, "unauthorized", api.Unauthorized),
        (418, "some_new_code", api.ApiError),
    ],
)
def test_a_4xx_raises_its_class_and_is_never_retried(stub_with, status, code, expected):
    stub = stub_with(scripted(error(status, code, "0"), ok()))
    with api.Client(stub.url, retries=3) as client, pytest.raises(api.ApiError) as raised:
        client.classify(images.solid())
    assert type(raised.value) is expected
    assert (raised.value.status, raised.value.code) == (status, code)
    assert raised.value.detail == f"scripted {code}"
    assert len(stub.seen) == 1


def test_retries_until_a_restarting_server_listens(stub_with):
    port = free_port()
    late = threading.Timer(0.8, lambda: stub_with(scripted(ok()), port=port))
    late.start()
    start = time.monotonic()
    with api.Client(f"http://127.0.0.1:{port}", retries=6, max_retry_wait_s=10) as client:
        assert client.classify(images.solid()).model.version == "s1"
    assert time.monotonic() - start >= 0.8
    late.join()


def test_no_response_when_nothing_ever_listens():
    start = time.monotonic()
    with (
        api.Client(f"http://127.0.0.1:{free_port()}", retries=2) as client,
        pytest.raises(api.NoResponse),
    ):
        client.classify(images.solid())
    assert 0.7 <= time.monotonic() - start < 3  # backoff 0.25 s + 0.5 s


# ---- query parameters (scripted server) ------------------------------------------------------


def test_parameters_travel_as_query_parameters(stub_with):
    stub = stub_with(
        lambda seen, i: ok({"results": [CLASSIFIED]}) if "batch" in seen.path else ok()
    )
    with api.Client(stub.url) as client:
        client.classify(images.solid())
        client.classify(
            images.solid(), attributes=["Smiling", "Eyeglasses"], threshold=0.3, top_k=3
        )
        client.classify(images.solid(), attributes="Smiling", threshold="tuned")
        client.classify_many([images.solid()], attributes=["Young"], top_k=1)
    paths = [urlsplit(s.path).path for s in stub.seen]
    assert paths == ["/classify"] * 3 + ["/classify/batch"]
    assert [s.query for s in stub.seen] == [
        {},
        {"attributes": ["Smiling,Eyeglasses"], "threshold": ["0.3"], "top_k": ["3"]},
        {"attributes": ["Smiling"], "threshold": ["tuned"]},
        {"attributes": ["Young"], "top_k": ["1"]},
    ]


# ---- the real service --------------------------------------------------------------------------


def top(result: api.Classification) -> str:
    assert isinstance(result, api.Classification), result
    return result.labels[0].label


@pytest.mark.serve
def test_classify_path_bytes_and_pil_image(served, tmp_path):
    path = tmp_path / "blue.png"
    path.write_bytes(images.solid(images.BLUE, fmt="PNG"))
    with api.Client(served.url) as client:
        from_path = client.classify(path)
        from_str_path = client.classify(str(path))
        from_bytes = client.classify(images.solid(images.RED))
        from_pil = client.classify(Image.new("RGB", (178, 218), images.GREEN))
        from_rgba = client.classify(Image.new("RGBA", (64, 64), (*images.GREEN, 255)))
        meta = client.metadata()
    assert top(from_path) == top(from_str_path) == CELEBA_LABELS[2]
    assert top(from_bytes) == CELEBA_LABELS[0]
    assert top(from_pil) == top(from_rgba) == CELEBA_LABELS[1]
    assert from_bytes.model == api.ModelRef(name="face-attributes", version="v1")
    assert list(from_bytes.probabilities) == list(CELEBA_LABELS)
    first = from_bytes.labels[0]
    assert first.label_id == 0 and first.probability == from_bytes.probabilities[first.label]
    assert meta["labels"] == list(CELEBA_LABELS)


@pytest.mark.serve
def test_classify_many_puts_a_bad_image_in_place_and_learns_the_batch_limit(served):
    good = [images.solid(c) for c in (images.RED, images.GREEN, images.BLUE)] * 7  # 21
    many = [*good[:10], b"not an image", *good[10:]]
    with api.Client(served.url, batch_size=40) as client:  # the server takes 16 per request
        results = client.classify_many(many)
        assert client.batch_limit == 16
    assert len(results) == 22
    bad = results[10]
    assert type(bad) is api.ImageRejected
    assert (bad.status, bad.code) == (400, "undecodable_image")
    expected = [CELEBA_LABELS[i % 3] for i in range(21)]
    assert [top(r) for r in results[:10] + results[11:]] == expected


@pytest.mark.serve
def test_classify_many_puts_an_oversized_image_in_place(served):
    oversized = os.urandom(1_100_000)  # the test service's max_body_mb is 1
    with api.Client(served.url) as client:
        results = client.classify_many([images.solid(images.RED), oversized, images.solid()])
    assert type(results[1]) is api.PayloadTooLarge and results[1].status == 413
    assert top(results[0]) == top(results[2]) == CELEBA_LABELS[0]


@pytest.mark.serve
def test_error_answers_raise_their_class(served):
    with api.Client(served.url) as client:
        with pytest.raises(api.ImageRejected) as raised:
            client.classify(b"not an image")
        assert (raised.value.status, raised.value.code) == (400, "undecodable_image")
        with pytest.raises(api.ImageRejected, match="empty_image"):
            client.classify(b"")
        with pytest.raises(api.PayloadTooLarge) as raised:
            client.classify(os.urandom(1_100_000))
        assert raised.value.status == 413


@pytest.mark.serve
def test_async_client(served):
    async def run():
        async with api.AsyncClient(served.url) as client:
            one, many, meta = await asyncio.gather(
                client.classify(images.solid(images.GREEN)),
                client.classify_many([images.solid(images.BLUE), b"", images.solid()]),
                client.metadata(),
            )
        return one, many, meta

    one, many, meta = asyncio.run(run())
    assert top(one) == CELEBA_LABELS[1]
    assert top(many[0]) == CELEBA_LABELS[2] and top(many[2]) == CELEBA_LABELS[0]
    assert type(many[1]) is api.ImageRejected and many[1].code == "empty_image"
    assert meta["version"] == "v1"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.client", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.serve
def test_cli_prints_a_table_and_json(served, tmp_path):
    red, green = tmp_path / "red.jpg", tmp_path / "green.png"
    red.write_bytes(images.solid(images.RED))
    green.write_bytes(images.solid(images.GREEN, fmt="PNG"))
    done = cli(str(red), str(green), "--url", served.url)
    assert done.returncode == 0, done.stderr
    assert f"{red}  (face-attributes v1)" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()]
    red_row = next(r for r in rows if r and r[0] == CELEBA_LABELS[0])
    assert red_row[2:] == ["0.500", "yes"]  # threshold from /metadata, judged present
    assert float(red_row[1]) > 0.5
    assert sum(1 for r in rows if r and r[0] == CELEBA_LABELS[1] and r[-1] == "yes") == 1

    as_json = cli(str(red), "--url", served.url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    (entry,) = json.loads(as_json.stdout)["results"]
    assert entry["image"] == str(red)
    assert entry["labels"][0]["label"] == CELEBA_LABELS[0]
    assert entry["model"] == {"name": "face-attributes", "version": "v1"}


@pytest.mark.serve
def test_cli_fails_with_the_error(served, tmp_path):
    red, broken = tmp_path / "red.jpg", tmp_path / "broken.jpg"
    red.write_bytes(images.solid(images.RED))
    broken.write_bytes(b"not an image")
    done = cli(str(red), str(broken), "--url", served.url)
    assert done.returncode == 1
    assert f"{red}  (face-attributes v1)" in done.stdout  # the good one is still shown
    assert f"error: {broken}: 400 undecodable_image" in done.stderr

    unreachable = cli(str(red), "--url", f"http://127.0.0.1:{free_port()}", "--retries", "0")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: ")
