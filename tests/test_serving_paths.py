"""The serving paths a GPU deployment takes, run on CPU over real HTTP: decode on the model
replica, half precision, preprocessing that follows the model version, public metadata only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import images
from tests.harness import deployment

pytestmark = pytest.mark.serve


def with_args(testbed, model_version: str = "v1", **args) -> dict:
    config = testbed.base_config(model_version=model_version)
    config["applications"][0]["args"].update(args)
    return config


def probabilities(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(list(response.json()["probabilities"].values()))


UPLOADS = {
    "red.jpg": (images.solid(images.RED), "image/jpeg"),
    "green.png": (images.solid(images.GREEN, fmt="PNG"), "image/png"),
    "rotated.jpg": (images.exif_rotated_jpeg(), "image/jpeg"),
    "two.gif": (images.two_frame_gif(), "image/gif"),
}
BAD_UPLOADS = {
    "empty.jpg": b"",
    "text.jpg": b"hello, not an image",
    "truncated.jpg": images.solid(images.RED, size=(400, 400))[:900],
}


def answers(http) -> tuple[dict, dict]:
    good = {
        name: probabilities(http.post("/classify", files={"image": (name, data, kind)}))
        for name, (data, kind) in UPLOADS.items()
    }
    bad = {}
    for name, data in BAD_UPLOADS.items():
        r = http.post("/classify", files={"image": (name, data, "image/jpeg")})
        bad[name] = (r.status_code, r.json()["error"])
    return good, bad


def test_decode_on_model_answers_as_decode_on_ingress(serve_testbed):
    serve_testbed.deploy(with_args(serve_testbed, decode_on="ingress"))
    on_ingress, bad_on_ingress = answers(serve_testbed.http)
    serve_testbed.deploy(with_args(serve_testbed, decode_on="model"))
    try:
        assert serve_testbed.metadata()["serving"]["decode_on"] == "model"
        on_model, bad_on_model = answers(serve_testbed.http)
        for name in UPLOADS:
            # Same pixels within 1-3 levels (tests/test_model_decode.py): probabilities agree.
            assert np.abs(on_model[name] - on_ingress[name]).max() < 0.01, name
        assert bad_on_model == bad_on_ingress
        assert all(status == 400 for status, _ in bad_on_model.values())
        batch = serve_testbed.http.post(
            "/classify/batch",
            files=[
                ("image", ("a.jpg", images.solid(images.BLUE), "image/jpeg")),
                ("image", ("b.jpg", b"garbage", "image/jpeg")),
                ("image", ("c.png", images.solid(images.GREEN, fmt="PNG"), "image/png")),
            ],
        )
        results = batch.json()["results"]
        assert [r.get("error") for r in results] == [None, "undecodable_image", None]
    finally:
        serve_testbed.deploy(serve_testbed.base_config())


def test_metadata_publishes_no_paths(serve_testbed):
    store = str(serve_testbed.model_store)
    config = serve_testbed.base_config()
    serve_testbed.deploy(config)
    # A refused artifact's error names it without the store's location.
    refused = serve_testbed.base_config()
    model = deployment(refused["applications"][0], "FaceAttributeModel")
    model["user_config"]["model_uri"] = serve_testbed.model_uri("no-such-version")
    serve_testbed.deploy(refused)
    try:
        text = serve_testbed.http.get("/metadata").text
        meta = json.loads(text)
        assert meta["version"] == "v1"
        assert "no-such-version" in meta["serving"]["last_error"]
        assert store not in text and "/tmp" not in text, text
        for key in ("data_dir", "storage_path", "checkpoint", "uri", "requested_uri", "path"):
            assert f'"{key}"' not in text, key
    finally:
        serve_testbed.deploy(config)


def stripes() -> bytes:
    """640x640 one-pixel red/blue columns, lossless: a nearest-neighbour resize to 64x64 keeps
    one colour, a bilinear (antialiased) one averages both."""
    row = np.where(np.arange(640) % 2 == 0, 0, 1)
    colours = np.array([images.RED, images.BLUE], dtype=np.uint8)[row]  # (640, 3)
    array = np.broadcast_to(colours, (640, 640, 3)).copy()
    from PIL import Image

    return images.encode(Image.fromarray(array), "PNG")


def expected_probabilities(uri: str, data: bytes) -> np.ndarray:
    """What the artifact at ``uri`` answers for ``data`` prepared its own way, in process."""
    import torch

    from serve_app.common.decode import decode_image
    from serve_app.model.inference import forward, load_model

    model = load_model(uri, torch.device("cpu"))
    pixels = torch.from_numpy(decode_image(data, model.spec, 10**7).copy())[None]
    return forward(model, pixels)[0].numpy()


def test_a_new_version_that_prepares_pixels_differently_is_never_fed_stale_pixels(
    serve_testbed,
):
    """Same input size, another interpolation: the old ingress kept its cached spec (it only
    refreshed on a size mismatch) and served bilinear pixels to a nearest model with a 200."""
    from tests.artifacts import write_tiny_artifact

    store = str(serve_testbed.model_store)
    nearest = write_tiny_artifact(store, version="v1-nearest", interpolation="nearest")
    data = stripes()
    as_bilinear = expected_probabilities(serve_testbed.model_uri("v1"), data)
    as_nearest = expected_probabilities(nearest.uri, data)
    assert np.abs(as_bilinear - as_nearest).max() > 0.1  # the two preparations differ

    serve_testbed.deploy(serve_testbed.base_config())
    files = {"image": ("stripes.png", data, "image/png")}
    first = probabilities(serve_testbed.http.post("/classify", files=files))
    np.testing.assert_allclose(first, as_bilinear, atol=1e-3)
    serve_testbed.deploy(serve_testbed.base_config(model_version="v1-nearest"))
    try:
        served = serve_testbed.http.post("/classify", files=files)
        assert served.json()["model"]["version"] == "v1-nearest"
        np.testing.assert_allclose(probabilities(served), as_nearest, atol=1e-3)
    finally:
        serve_testbed.deploy(serve_testbed.base_config())


def test_half_precision_serves_end_to_end_on_cpu(serve_testbed):
    """precision: float16 with device: cpu runs a GPU replica's path (cast, freeze, normalise,
    warm up, chunk) behind real HTTP; `fp16: true` (older configs) means the same."""
    serve_testbed.deploy(serve_testbed.base_config())
    files = {"image": ("red.jpg", images.solid(images.RED), "image/jpeg")}
    full = probabilities(serve_testbed.http.post("/classify", files=files))
    legacy = with_args(serve_testbed, fp16=True)
    del legacy["applications"][0]["args"]["precision"]  # an older config has only fp16
    serve_testbed.deploy(legacy)
    try:
        assert serve_testbed.metadata()["serving"]["dtype"] == "float16"
        half = probabilities(serve_testbed.http.post("/classify", files=files))
        assert np.abs(half - full).max() < 0.01
    finally:
        serve_testbed.deploy(serve_testbed.base_config())
