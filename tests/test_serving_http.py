"""The Serve application over real HTTP: endpoints, formats, errors, batching, live changes."""

from __future__ import annotations

import concurrent.futures as cf
import shutil

import httpx
import pytest

from tests import images
from tests.artifacts import CELEBA_LABELS
from tests.test_openapi import check as check_against_document

pytestmark = pytest.mark.serve


def classify(
    http: httpx.Client, data: bytes, content_type: str = "image/jpeg", **kw
) -> httpx.Response:
    return http.post("/classify", files={"image": ("upload", data, content_type)}, **kw)


def top_label(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["labels"][0]["label"]


# ---- endpoints ---------------------------------------------------------------------------------


def test_health_ready_metadata_openapi(served):
    http = served.http
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": "face-attributes", "version": "v1"}
    meta = http.get("/metadata").json()
    assert meta["labels"] == list(CELEBA_LABELS)
    assert meta["input_size"] == [64, 64]
    assert meta["metrics"] == {"val_auroc": 0.5}
    assert meta["serving"]["device"] == "cpu"
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/classify", "/classify/batch", "/healthz", "/readyz", "/metadata"} <= set(
        spec["paths"]
    )


def test_classify_multipart_response_format(served):
    response = classify(served.http, images.solid(images.RED))
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "face-attributes", "version": "v1"}
    assert list(body["probabilities"]) == list(CELEBA_LABELS)
    assert all(0.0 <= p <= 1.0 for p in body["probabilities"].values())
    # labels: exactly those at or above the threshold, most probable first
    above = {k for k, p in body["probabilities"].items() if p >= 0.5}
    assert {entry["label"] for entry in body["labels"]} == above
    probs = [entry["probability"] for entry in body["labels"]]
    assert probs == sorted(probs, reverse=True)
    first = body["labels"][0]
    # the seed's keys, plus the threshold the label was judged by (additive, issue #15)
    assert first == {
        "label_id": 0,
        "label": CELEBA_LABELS[0],
        "probability": first["probability"],
        "threshold": 0.5,
    }


def test_classify_raw_body(served):
    response = served.http.post(
        "/classify",
        content=images.solid(images.GREEN, fmt="PNG"),
        headers={"content-type": "image/png"},
    )
    assert top_label(response) == CELEBA_LABELS[1]


@pytest.mark.parametrize(
    ("fmt", "color", "expected"),
    [
        ("JPEG", images.RED, 0),
        ("PNG", images.GREEN, 1),
        ("WEBP", images.BLUE, 2),
        ("BMP", images.RED, 0),
    ],
)
def test_each_image_format(served, fmt, color, expected):
    response = classify(served.http, images.solid(color, fmt=fmt), f"image/{fmt.lower()}")
    assert top_label(response) == CELEBA_LABELS[expected]


def test_gif_uses_first_frame(served):
    assert (
        top_label(classify(served.http, images.two_frame_gif(images.RED, images.BLUE), "image/gif"))
        == CELEBA_LABELS[0]
    )


def test_transparent_png_is_white(served):
    body = classify(served.http, images.transparent_png(), "image/png").json()
    assert {e["label"] for e in body["labels"]} >= set(CELEBA_LABELS[:3])


def test_exif_orientation_applied(served):
    body = classify(served.http, images.exif_rotated_jpeg()).json()
    # label 3 fires only when the red half is on top, i.e. after EXIF rotation
    assert body["probabilities"][CELEBA_LABELS[3]] > 0.9, body["probabilities"]


def test_large_photo_decodes(served):
    response = classify(served.http, images.solid(images.BLUE, size=(1920, 1080)))
    assert top_label(response) == CELEBA_LABELS[2]


def test_batch_endpoint_in_order_with_per_image_errors(served):
    files = [
        ("image", ("a.jpg", images.solid(images.RED), "image/jpeg")),
        ("image", ("b.txt", b"not an image", "image/jpeg")),
        ("image", ("c.png", images.solid(images.BLUE, fmt="PNG"), "image/png")),
    ]
    response = served.http.post("/classify/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert results[0]["labels"][0]["label"] == CELEBA_LABELS[0]
    assert results[1]["error"] == "undecodable_image"
    assert results[2]["labels"][0]["label"] == CELEBA_LABELS[2]


# ---- caller-chosen attributes, threshold, top_k --------------------------------------------


def raw_classify(http: httpx.Client, query: str, data: bytes | None = None, path="/classify"):
    data = data if data is not None else images.solid(images.RED)
    return http.post(f"{path}?{query}", content=data, headers={"content-type": "image/jpeg"})


def test_default_answer_is_the_seeds_with_each_labels_threshold(served):
    body = classify(served.http, images.solid(images.RED)).json()
    assert body["labels"], body
    single = served.metadata()["threshold"]
    for entry in body["labels"]:
        assert set(entry) == {"label_id", "label", "probability", "threshold"}
        assert entry["threshold"] == single  # the tiny test artifact has no tuned thresholds
        assert entry["probability"] >= entry["threshold"]


def test_attributes_subset_in_the_models_order_and_unknown_names_422(served):
    asked = [CELEBA_LABELS[5], CELEBA_LABELS[0], CELEBA_LABELS[5]]
    body = raw_classify(served.http, f"attributes={','.join(asked)}").json()
    assert list(body["probabilities"]) == [CELEBA_LABELS[5], CELEBA_LABELS[0]]
    assert {e["label"] for e in body["labels"]} <= {CELEBA_LABELS[0], CELEBA_LABELS[5]}
    for path in ("/classify", "/classify/batch"):
        bad = served.http.post(
            f"{path}?attributes=Smiling,Smilling",
            files={"image": ("a.jpg", images.solid(), "image/jpeg")},
        )
        assert_error(bad, 422, "unknown_attribute")
        assert "Smilling" in bad.json()["detail"] and CELEBA_LABELS[39] in bad.json()["detail"]


def test_threshold_number_judges_every_label_by_it(served):
    probabilities = classify(served.http, images.solid(images.RED)).json()["probabilities"]
    for threshold in (0.05, 0.95):
        body = raw_classify(served.http, f"threshold={threshold}").json()
        assert {e["label"] for e in body["labels"]} == {
            k for k, p in probabilities.items() if p >= threshold
        }
        assert all(e["threshold"] == threshold for e in body["labels"])
    assert_error(raw_classify(served.http, "threshold=1"), 422, "invalid_query")
    assert_error(raw_classify(served.http, "threshold=high"), 422, "invalid_query")
    assert raw_classify(served.http, "threshold=tuned").status_code == 200


def test_top_k_answers_the_k_most_probable_whatever_the_threshold(served):
    probabilities = classify(served.http, images.solid(images.RED)).json()["probabilities"]
    ranked = sorted(probabilities, key=probabilities.get, reverse=True)
    body = raw_classify(served.http, "top_k=5&threshold=0.99").json()
    assert [e["label"] for e in body["labels"]] == ranked[:5]
    assert all(e["threshold"] == 0.99 for e in body["labels"])
    both = raw_classify(served.http, f"top_k=1&attributes={ranked[3]},{ranked[7]}").json()
    assert [e["label"] for e in both["labels"]] == [ranked[3]]
    assert_error(raw_classify(served.http, "top_k=0"), 422, "invalid_query")


def test_batch_takes_the_same_query(served):
    files = [("image", ("a.jpg", images.solid(images.RED), "image/jpeg"))] * 2
    results = served.http.post(
        f"/classify/batch?top_k=2&attributes={CELEBA_LABELS[0]},{CELEBA_LABELS[1]},"
        f"{CELEBA_LABELS[2]}",
        files=files,
    ).json()["results"]
    assert [len(r["labels"]) for r in results] == [2, 2]
    assert all(len(r["probabilities"]) == 3 for r in results)


# ---- errors ------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["detail"], body


def test_error_empty_image(served):
    assert_error(
        served.http.post("/classify", content=b"", headers={"content-type": "image/jpeg"}),
        400,
        "empty_image",
    )
    assert_error(classify(served.http, b""), 400, "empty_image")


def test_error_undecodable_and_truncated(served):
    assert_error(classify(served.http, b"\x00garbage" * 100), 400, "undecodable_image")
    jpeg = images.solid(images.RED, size=(400, 400))
    assert_error(classify(served.http, jpeg[: len(jpeg) // 2]), 400, "undecodable_image")


def test_error_decompression_bomb(served):
    big = images.solid(images.RED, size=(2100, 2100), fmt="PNG")  # 4.4 MP > the test's 4 MP
    assert_error(classify(served.http, big, "image/png"), 400, "image_too_large")


def test_error_body_over_limit(served):
    too_big = b"\xff" * (1024 * 1024 + 10)  # the test config allows 1 MB
    assert_error(
        served.http.post("/classify", content=too_big, headers={"content-type": "image/jpeg"}),
        413,
        "payload_too_large",
    )

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b"\xff" * 100_000

    assert_error(
        served.http.post("/classify", content=chunks(), headers={"content-type": "image/jpeg"}),
        413,
        "payload_too_large",
    )


def test_error_unsupported_content_type(served):
    assert_error(
        served.http.post("/classify", content=b"abc", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(served.http.post("/classify", content=b"abc"), 415, "unsupported_media_type")


def test_error_missing_image_field(served):
    assert_error(
        served.http.post("/classify", files={"photo": ("a.jpg", images.solid(), "image/jpeg")}),
        422,
        "missing_image",
    )


def test_error_unknown_route_and_method(served):
    assert_error(served.http.get("/nope"), 404, "not_found")
    assert_error(served.http.get("/classify"), 405, "method_not_allowed")


def test_bad_input_never_restarts_the_replica(served):
    before = served.metadata()["serving"]["replica_id"]
    for data in (
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,
        images.solid()[:200],
        b"GIF89a" + b"\xff" * 30,
    ):
        assert classify(served.http, data).status_code == 400
    assert classify(served.http, images.solid()).status_code == 200
    assert served.metadata()["serving"]["replica_id"] == before


# ---- batching and runtime configuration ---------------------------------------------------------


def concurrent_classify(url: str, n: int, data: bytes) -> list[httpx.Response]:
    def one(_):
        with httpx.Client(base_url=url, timeout=60) as c:
            return classify(c, data)

    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_requests_are_batched(served):
    served.deploy(served.base_config(batch_wait_timeout_s=0.05))
    responses = concurrent_classify(served.url, 24, images.solid())
    assert all(r.status_code == 200 for r in responses)
    sizes = {int(k): v for k, v in served.metadata()["serving"]["batch_sizes"].items()}
    assert max(sizes) > 1, sizes
    assert sum(k * v for k, v in sizes.items()) >= 24


def test_batch_settings_change_at_runtime(served):
    replica = served.metadata()["serving"]["replica_id"]
    served.deploy(served.base_config(max_batch_size=4, batch_wait_timeout_s=0.1))
    serving = served.metadata()["serving"]
    assert (serving["max_batch_size"], serving["batch_wait_timeout_s"]) == (4, 0.1)
    assert serving["replica_id"] == replica  # reconfigured in place, not restarted
    responses = concurrent_classify(served.url, 16, images.solid())
    assert all(r.status_code == 200 for r in responses)
    sizes = {int(k) for k in served.metadata()["serving"]["batch_sizes"]}
    assert max(sizes) <= 4 and max(sizes) > 1, sizes


def test_large_inputs_batched_across_requests_fit_the_transport(served, tmp_path):
    """32 decoded images at 224x224 are 4.8 MB, over the 4 MiB message limit of Serve's gRPC
    transport between replicas: the ingress splits its calls and every image gets its answer."""
    from tests.artifacts import write_tiny_artifact
    from tests.harness import deployment

    write_tiny_artifact(str(tmp_path), version="big", input_size=(224, 224))
    config = served.base_config()
    app = config["applications"][0]
    app["args"]["model_calls_in_flight"] = 1  # everything decoded meanwhile joins the next call
    model = deployment(app, "FaceAttributeModel")
    model["user_config"]["model_uri"] = str(tmp_path / "face-attributes" / "big")
    served.deploy(config)
    try:
        files = [
            ("image", (f"{i}.png", images.solid(size=(178, 218)), "image/png")) for i in range(16)
        ]

        def post(_):
            with httpx.Client(base_url=served.url, timeout=60) as c:
                return c.post("/classify/batch", files=files)

        with cf.ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(post, range(4)))
        assert [r.status_code for r in responses] == [200] * 4, responses[0].text
        results = [res for r in responses for res in r.json()["results"]]
        assert len(results) == 64 and all(len(res["probabilities"]) == 40 for res in results)
        sizes = {int(k) for k in served.metadata()["serving"]["batch_sizes"]}
        assert max(sizes) > 1, sizes
    finally:
        served.deploy(served.base_config())


# ---- model swaps ------------------------------------------------------------------------------


def test_model_swap_under_load_loses_nothing(served):
    """v1 (64x64, logits) -> v2 (48x48, probabilities) while requests flow: zero failures, and
    the ingress follows the new input size from the artifact's metadata."""
    from tests.harness import wait_for
    from tests.load import ClosedLoopLoad

    with ClosedLoopLoad(served.url, clients=4, images=images.solid(images.RED)) as load:
        served.deploy(served.base_config(model_version="v2"))
        wait_for(lambda: load.versions()[-1:] == ["v2"], 60, "responses from v2")
        n_after = load.count()
        wait_for(lambda: load.count() > n_after + 20, 60, "more requests after the swap")
    assert load.failures() == [], load.describe_failures()
    versions = load.versions()
    assert versions[0] == "v1" and versions[-1] == "v2"
    assert served.metadata()["input_size"] == [48, 48]
    assert top_label(classify(served.http, images.solid(images.RED))) == CELEBA_LABELS[0]


def test_tampered_artifact_refused_old_model_keeps_serving(served, model_store):
    tampered = model_store / "face-attributes" / "v1-tampered"
    if not tampered.exists():
        shutil.copytree(model_store / "face-attributes" / "v1", tampered)
        model = tampered / "model.pt"
        data = bytearray(model.read_bytes())
        data[-20] ^= 0xFF
        model.write_bytes(bytes(data))
    served.deploy(served.base_config(model_version="v1-tampered"))
    meta = served.metadata()
    assert meta["version"] == "v1"  # still serving the good model
    assert "sha256 mismatch" in meta["serving"]["last_error"]
    assert top_label(classify(served.http, images.solid(images.RED))) == CELEBA_LABELS[0]


def test_a_busy_model_keeps_calls_waiting_instead_of_refusing_them(served, tmp_path):
    """One forward at a time (max_ongoing_requests 1) of a slow model, one image per call and
    24 callers: most calls wait over a second for the replica to take them, while it answers
    one every ~0.1 s. Old code: 503 model_unavailable "no model replica is running; retry" to
    every call not taken within 1 s (the bound meant for a deployment without replicas); now
    they wait in Serve's queue and all are answered."""
    from tests.artifacts import write_tiny_artifact
    from tests.harness import deployment

    write_tiny_artifact(str(tmp_path), version="slow", slow=64)  # ~0.12 s per pass here
    config = served.base_config(
        model_uri=str(tmp_path / "face-attributes" / "slow"), max_batch_size=1
    )
    app = config["applications"][0]
    app["args"].update(images_per_model_call=1, model_calls_in_flight=24)
    deployment(app, "FaceAttributeModel").update(max_ongoing_requests=1, max_queued_requests=64)
    served.deploy(config)  # the next test's `served` deploys the baseline again
    # One call first: the fresh replica's first passes (TorchScript's profiling runs) are
    # slower, and the deployment has answered once, as a serving one has.
    assert concurrent_classify(served.url, 1, images.solid())[0].status_code == 200
    responses = concurrent_classify(served.url, 24, images.solid())
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 24, [r.text for r in responses if r.status_code != 200][:3]


def test_overload_gets_fast_503_with_retry_after(served):
    """A burst past the model's tiny queue: every answer is a 200 or a clean 503, and the 503s
    of that same burst (at least one) say 'overloaded' with Retry-After."""
    import time

    from tests.harness import deployment, wait_for

    config = served.base_config(max_batch_size=1, batch_wait_timeout_s=0.0)
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model.update(max_ongoing_requests=1, max_queued_requests=1)

    def burst_with_503s() -> list[httpx.Response] | None:
        responses = concurrent_classify(served.url, 48, images.solid(size=(1200, 1200)))
        return responses if any(r.status_code == 503 for r in responses) else None

    served.deploy(config)
    try:
        responses = wait_for(burst_with_503s, 60, "a burst with 503s under overload")
        busy = [r for r in responses if r.status_code == 503]
        assert busy, "wait_for returned a burst without 503s"
        assert all(r.status_code in (200, 503) for r in responses), {
            r.status_code for r in responses
        }
        doc = served.http.get("/openapi.json").json()
        for r in busy:
            assert r.json()["error"] == "overloaded", r.text
            assert r.headers["retry-after"] == "1"
            check_against_document(doc, "POST", "/classify", r)
        start = time.perf_counter()
        assert classify(served.http, images.solid()).status_code in (200, 503)
        assert time.perf_counter() - start < 5
    finally:
        served.deploy(served.base_config())
