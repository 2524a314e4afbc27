"""API keys and per-key quotas (serve_app/ingress/auth.py) on the real service: 401 without a
key, keys rotated by rewriting the file (no restart), quotas as 429 + Retry-After across two
ingress replicas, metrics by key name (never the key), the Python client and CLI with a key,
and the OpenAPI document's security schemes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serve_app import keys as key_file
from tests import images
from tests.harness import ROOT, deployment, wait_for
from tests.test_metrics import metrics_url
from tests.test_openapi import check

pytestmark = pytest.mark.serve

JPEG = images.solid()


def post(served, key: str | None = None, header: str = "bearer", path: str = "/classify", **kw):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
    kw.setdefault("files", {"image": ("a.jpg", JPEG, "image/jpeg")})
    return served.http.post(path, headers=headers, **kw)


@pytest.fixture(scope="module")
def key_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.yaml"


@pytest.fixture(scope="module")
def keyed(serve_testbed, key_path):
    """The app with keys, once for the module (a change of args rebuilds the app: ~40 s):
    alice (5 requests/s, 120 images/min), bob (no quota); two ingress replicas (the quotas are
    shared across them). The tests use ``served`` = this testbed, not the per-test baseline."""
    if key_path.exists():
        key_path.unlink()
    issued = {
        "alice": key_file.add(key_path, "alice", rps=5, per_minute=120),
        "bob": key_file.add(key_path, "bob"),
    }
    config = serve_testbed.base_config()
    config["applications"][0]["args"]["api_keys_file"] = str(key_path)
    ingress = deployment(config["applications"][0], "Ingress")
    ingress["autoscaling_config"].update(min_replicas=2, initial_replicas=2, max_replicas=2)
    serve_testbed.deploy_keyed(config, issued["bob"])
    try:
        yield issued
    finally:
        serve_testbed.deploy(serve_testbed.base_config())


@pytest.fixture
def served(keyed, serve_testbed):
    """Here: the keyed app (the conftest's ``served`` would redeploy the baseline)."""
    return serve_testbed


def test_keys_required_except_on_open_routes(keyed, served):
    missing = post(served)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = post(served, "not-a-key")
    assert wrong.status_code == 401 and "not-a-key" not in wrong.text
    assert post(served, keyed["alice"]).status_code == 200
    assert post(served, keyed["bob"], header="x-api-key").status_code == 200
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert served.http.get(path).status_code == 200, path
    assert served.http.get("/metadata").status_code == 401
    doc = served.http.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert doc["paths"]["/classify"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert {"401", "429"} <= set(doc["paths"]["/classify"]["post"]["responses"])
    assert "security" not in doc["paths"]["/healthz"]["get"]
    check(doc, "POST", "/classify", missing)  # the 401 as the document declares it


def test_quotas_answer_429_with_retry_after_across_replicas(keyed, served, figures):
    """alice: 5 requests/s. 8 clients for 6 s through two ingress replicas: admitted at most
    what the quota allows plus the bound the design states ((N - 1) x (burst + rate x push
    interval) with N = 2), the rest 429 with Retry-After; bob's requests meanwhile unaffected."""
    answers: list[tuple[float, int, str | None]] = []
    refusals: list[httpx.Response] = []
    stop = threading.Event()

    def client(key: str) -> None:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post(
                    "/classify",
                    headers={"Authorization": f"Bearer {key}"},
                    files={"image": ("a.jpg", JPEG, "image/jpeg")},
                )
                answers.append((time.monotonic(), r.status_code, r.headers.get("retry-after")))
                if r.status_code == 429 and not refusals:
                    refusals.append(r)

    time.sleep(1.2)  # alice's buckets full again after the earlier tests
    threads = [threading.Thread(target=client, args=(keyed["alice"],)) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(6)
    stop.set()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    ok = sum(1 for _, s, _ in answers if s == 200)
    limited = [(s, r) for _, s, r in answers if s == 429]
    assert {s for _, s, _ in answers} <= {200, 429}
    assert limited and all(r and int(r) >= 1 for _, r in limited)
    allowed = 5 * seconds + 5  # the rate over the window plus one burst
    bound = (2 - 1) * (5 + 5 * 0.5)
    figures.update(
        seconds=round(seconds, 1), admitted=ok, limited=len(limited), allowed=round(allowed, 1),
        bound=bound, overshoot=round(ok - allowed, 1),
    )  # fmt: skip
    assert ok <= allowed + bound, (ok, allowed, bound)
    assert ok >= 5 * seconds * 0.6  # and the quota is not starved either
    doc = served.http.get("/openapi.json").json()
    check(doc, "POST", "/classify", refusals[0])  # the 429 as the document declares it
    assert post(served, keyed["bob"]).status_code == 200
    # The images quota: a batch counts its 16 images; alice's images bucket holds 120 a minute,
    # so at most 120 // 16 batches pass (fewer: the requests above took some).
    batch = {"files": [("image", (f"{i}.jpg", JPEG, "image/jpeg")) for i in range(16)]}
    statuses = []
    for _ in range(12):
        time.sleep(0.25)  # under the request quota
        statuses.append(post(served, keyed["alice"], path="/classify/batch", **batch).status_code)
    assert 429 in statuses and 200 in statuses, statuses
    assert statuses.count(200) <= 120 // 16, statuses


def test_metrics_count_keys_by_name_never_the_key(keyed, served):
    post(served)  # a 401
    post(served, keyed["bob"])

    def exported() -> str | None:
        text = httpx.get(metrics_url(), timeout=10).text
        return text if "ray_face_key_requests_total{" in text and 'key="bob"' in text else None

    text = wait_for(exported, 60, "the key metrics exported")
    assert 'outcome="unauthorized"' in text and 'key="-"' in text
    assert keyed["bob"] not in text and keyed["alice"] not in text


def test_python_client_and_cli_send_the_key(keyed, served, tmp_path):
    from serve_app.client import Client, Unauthorized

    with Client(served.url, api_key=keyed["bob"]) as client:
        assert client.classify(JPEG).model.version == "v1"
    with Client(served.url, api_key="wrong", retries=0) as client, pytest.raises(Unauthorized):
        client.classify(JPEG)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(JPEG)
    env = {**os.environ, "FACE_API_KEY": keyed["bob"]}
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.client", str(photo), "--url", served.url, "--json"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"results"' in done.stdout


# ---- no trace of a face or a key ---------------------------------------------------------------


def marked_images(marker: bytes) -> dict[str, bytes]:
    """Images (and non-images) carrying ``marker`` in their bytes: a JPEG comment, a PNG text
    chunk, undecodable bytes, a truncated JPEG."""
    import io

    from PIL import Image, PngImagePlugin

    from tests.test_faces import ASTRONAUT_CROP, astronaut

    def save(image, fmt: str, **params) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **params)
        return buffer.getvalue()

    info = PngImagePlugin.PngInfo()
    info.add_text("note", marker.decode())
    face = astronaut().crop(ASTRONAUT_CROP)
    jpeg = save(face, "JPEG", comment=marker)
    return {
        "jpeg": jpeg,
        "png": save(Image.new("RGB", (64, 64), (10, 200, 10)), "PNG", pnginfo=info),
        "junk": marker * 40,
        "truncated": jpeg[: len(jpeg) // 2] + marker,
    }


def files_holding(marker: bytes, roots: list[Path], since: float, skip: tuple[Path, ...]) -> list:
    """Regular files under ``roots`` written since ``since`` whose bytes hold ``marker``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if any(path.is_relative_to(s) for s in skip) or not path.is_file():
                    continue
                if path.stat().st_mtime < since or path.stat().st_size > 256 * 1024 * 1024:
                    continue
                if marker in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue  # gone meanwhile, or a socket
    return found


def test_no_trace_of_a_face_or_a_key_in_logs_metrics_errors_or_temp_files(
    keyed, served, tmp_path, tmp_path_factory
):
    """Marked images through every route and error path, a marked key, and a model replica
    killed with marked images in flight; then Ray's logs of this session (every component's,
    workers' stdout/stderr, Serve's access logs), the metrics and every file written under
    the temp directories since: none holds the marker (nor the key)."""
    import secrets
    import signal
    import tempfile

    import ray

    from tests.reliability.helpers import replica_pids

    marker = f"FACEMARK{secrets.token_hex(12)}".encode()
    fake_key = f"KEYMARK{secrets.token_hex(12)}"
    started = time.time() - 1
    marked = marked_images(marker)
    auth = {"Authorization": f"Bearer {keyed['bob']}"}

    def send(path: str, files=None, content=None, headers=None, **params):
        return served.http.post(
            path, files=files, content=content, headers={**auth, **(headers or {})}, params=params
        )

    answers = [
        send("/classify", {"image": ("face.jpg", marked["jpeg"], "image/jpeg")}),
        send("/classify/batch", [("image", (n, data, "image/png")) for n, data in marked.items()]),
        send("/faces", {"image": ("face.jpg", marked["jpeg"], "image/jpeg")}),
        send("/explain", {"image": ("face.jpg", marked["jpeg"], "image/jpeg")}, grid=2),
        send("/classify", content=marked["junk"], headers={"Content-Type": "image/jpeg"}),
        send("/classify", content=marked["truncated"], headers={"Content-Type": "image/jpeg"}),
        send("/faces", content=marked["junk"], headers={"Content-Type": "image/png"}),
        send("/classify", content=b"--x\r\n" + marker, headers={"Content-Type": "multipart/form-data; boundary=x"}),
        send("/classify", content=marker * 10, headers={"Content-Type": "text/plain"}),
        send("/classify", content=marker * (1024 * 1024 // len(marker) + 2), headers={"Content-Type": "image/jpeg"}),
        served.http.post("/classify", files={"image": ("f.jpg", marked["jpeg"])}, headers={"Authorization": f"Bearer {fake_key}"}),
        served.http.post("/classify", files={"image": ("f.jpg", marked["jpeg"])}, headers={"X-API-Key": fake_key}),
    ]  # fmt: skip
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 200, 200, 400, 400, 400, 422, 415, 413, 401, 401], statuses
    assert not any(marker in a.content or fake_key.encode() in a.content for a in answers)

    # A model replica lost with marked images in flight (its ingress logs what failed).
    (pid,) = replica_pids(served)["FaceAttributeModel"]
    with ThreadPoolExecutor(8) as pool:
        flying = [
            pool.submit(send, "/classify", {"image": ("f.jpg", marked["jpeg"], "image/jpeg")})
            for _ in range(16)
        ]
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        assert {f.result().status_code for f in flying} <= {200, 503}
    wait_for(
        lambda: replica_pids(served)["FaceAttributeModel"] not in ([], [pid]), 60, "a new replica"
    )

    metrics = httpx.get(metrics_url(), timeout=10).content
    assert marker not in metrics and fake_key.encode() not in metrics
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    time.sleep(2)  # log lines in Ray's buffers reach their files
    roots = [session, Path(tempfile.gettempdir()), Path("/dev/shm")]
    own = (tmp_path_factory.getbasetemp(), ROOT)  # the test's own files
    for needle in (marker, fake_key.encode(), keyed["bob"].encode()):
        assert files_holding(needle, roots, started, own) == [], needle[:8]
    log_files = [p for p in (session / "logs").rglob("*") if p.is_file()]
    assert len(log_files) > 10  # the search saw Ray's logs


def test_keys_rotate_without_a_restart(keyed, served, key_path):
    """Last in the module: it revokes alice."""
    before = served.client.get_serve_details()["applications"]["face-attributes"]
    ingress_ids = {r["replica_id"] for r in before["deployments"]["Ingress"]["replicas"]}
    key_file.remove(key_path, "alice")
    carol = key_file.add(key_path, "carol")
    wait_for(
        lambda: (
            post(served, keyed["alice"]).status_code == 401
            and post(served, carol).status_code == 200
        ),
        30,
        "the ingress replicas to read the rewritten file",
    )
    for _ in range(6):  # both replicas (HAProxy takes turns), every time
        assert post(served, keyed["alice"]).status_code == 401
        assert post(served, carol).status_code == 200
    after = served.client.get_serve_details()["applications"]["face-attributes"]
    assert {r["replica_id"] for r in after["deployments"]["Ingress"]["replicas"]} == ingress_ids
