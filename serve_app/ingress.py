"""The HTTP ingress deployment: decode -> predict (model deployment) -> encode.

``__call__`` only routes and parses HTTP; ``classify`` and ``classify_many`` are the typed
pipeline. Every failure leaves as {"error", "detail"} JSON with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from serve_app.config import AppArgs
from serve_app.decode import InputSpec, decode_image
from serve_app.errors import ApiError, model_unavailable
from serve_app.face_attribute_model import Prediction
from serve_app.metrics import IngressMetrics
from serve_app.model_client import InputSizeChanged, ModelClient
from serve_app.multipart import parse_multipart
from serve_app.openapi import openapi_spec

logger = logging.getLogger("ray.serve")

Handler = Callable[[Request], Awaitable[Response]]
DESCRIBE_TIMEOUT_S = 5.0


def encode_prediction(prediction: Prediction) -> dict[str, Any]:
    """Stage 3: the response body, compatible with the seed service."""
    probs = prediction.probabilities.tolist()
    ranked = sorted(range(len(probs)), key=lambda i: probs[i], reverse=True)
    return {
        "labels": [
            {"label_id": i, "label": prediction.labels[i], "probability": round(probs[i], 6)}
            for i in ranked
            if probs[i] >= prediction.threshold
        ],
        "probabilities": {label: round(p, 6) for label, p in zip(prediction.labels, probs)},
        "model": {"name": prediction.name, "version": prediction.version},
    }


@serve.deployment(name="Ingress")
class Ingress:
    def __init__(self, model: DeploymentHandle, args: dict[str, Any] | None = None):
        self._args = AppArgs.model_validate(args or {})
        self._model = model
        self._client = ModelClient(
            model,
            images_per_call=self._args.images_per_model_call,
            calls_in_flight=self._args.model_calls_in_flight,
            max_waiting_images=self._args.max_waiting_images,
        )
        self._spec: InputSpec | None = None
        self._spec_lock = asyncio.Lock()
        self._metrics = IngressMetrics()
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self._page,
            ("POST", "/classify"): self._classify_endpoint,
            ("POST", "/classify/batch"): self._classify_batch_endpoint,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metadata"): self._metadata,
            ("GET", "/openapi.json"): self._openapi,
        }

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        handler = self._routes.get((request.method, path))
        try:
            if handler is None:
                allowed = [m for (m, p) in self._routes if p == path]
                if allowed:
                    raise ApiError(
                        405, "method_not_allowed", f"{path} accepts {', '.join(allowed)}"
                    )
                raise ApiError(404, "not_found", f"no route {path}; see /openapi.json")
            response = await handler(request)
        except ApiError as e:
            response = e.response()
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, path)
            response = ApiError(
                500, "internal_error", "unexpected server error (logged)"
            ).response()
        self._metrics.count(path if handler else "other", response.status_code)
        return response

    # ---- typed pipeline -------------------------------------------------------------------

    async def classify(self, image: bytes) -> dict[str, Any]:
        """decode -> predict -> encode for one image."""
        prediction = await self._predict_with_current_spec(image)
        return encode_prediction(prediction)

    async def classify_many(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One result or one per-image error for each image, in order; they batch together."""

        async def one(image: bytes) -> dict[str, Any]:
            try:
                return await self.classify(image)
            except ApiError as e:
                if e.status == 503:
                    raise  # overload is the whole request's answer, not a per-image one
                return e.as_dict()

        return list(await asyncio.gather(*(one(image) for image in images)))

    async def _predict_with_current_spec(self, image: bytes) -> Prediction:
        for attempt in range(2):
            spec = await self._input_spec(refresh=attempt > 0)
            pixels = await self._decode(image, spec)
            try:
                return await self._client.predict(pixels)
            except InputSizeChanged:
                pass  # a new model version with another input size landed: follow it, once
        raise model_unavailable("the model changed its input size twice during this request")

    async def _decode(self, image: bytes, spec: InputSpec) -> np.ndarray:
        start = time.perf_counter()
        pixels = await asyncio.to_thread(decode_image, image, spec, self._args.max_image_pixels)
        self._metrics.decode_seconds.observe(time.perf_counter() - start)
        return pixels  # (3, H, W) uint8

    async def _input_spec(self, refresh: bool = False) -> InputSpec:
        if self._spec is not None and not refresh:
            return self._spec
        async with self._spec_lock:
            if self._spec is None or refresh:
                meta = await self._describe()
                self._spec = InputSpec(tuple(meta["input_size"]), meta["interpolation"])
        return self._spec

    async def _describe(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._model.describe.remote(), DESCRIBE_TIMEOUT_S)
        except (asyncio.TimeoutError, ray.exceptions.RayError, RuntimeError) as e:
            raise model_unavailable(f"the model deployment is not ready: {e}") from e

    # ---- HTTP endpoints ----------------------------------------------------------------------

    async def _classify_endpoint(self, request: Request) -> Response:
        images = await self._read_images(request, max_images=1)
        return JSONResponse(await self.classify(images[0]))

    async def _classify_batch_endpoint(self, request: Request) -> Response:
        images = await self._read_images(request, max_images=self._args.max_batch_images)
        return JSONResponse({"results": await self.classify_many(images)})

    async def _read_images(self, request: Request, max_images: int) -> list[bytes]:
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            body = await self._read_body(request)
            parts = parse_multipart(body, content_type, max_parts=max_images + 8)
            images = [bytes(p.data) for p in parts if p.name == "image"]
            if not images:
                raise ApiError(422, "missing_image", "multipart body has no field named 'image'")
            if len(images) > max_images:
                raise ApiError(
                    413,
                    "too_many_images",
                    f"{len(images)} images; at most {max_images} per request",
                )
            return images
        if media_type.startswith("image/"):
            return [await self._read_body(request)]
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media_type or '(none)'!r}: send multipart/form-data with an 'image' "
            "field, or the raw image with Content-Type image/*",
        )

    async def _read_body(self, request: Request) -> bytes:
        limit = self._args.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        meta = await self._describe()
        return JSONResponse(
            {"ready": True, "model": {"name": meta["name"], "version": meta["version"]}}
        )

    async def _metadata(self, request: Request) -> Response:
        meta = await self._describe()
        keys = (
            "name", "version", "labels", "input_size", "mean", "std", "interpolation",
            "threshold", "output_kind", "backbone", "created_at", "metrics", "training", "serving",
        )  # fmt: skip
        return JSONResponse({k: meta.get(k) for k in keys})

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_spec(self._args))

    async def _page(self, request: Request) -> Response:
        page = resources.files("serve_app").joinpath("static/index.html").read_text()
        return HTMLResponse(page)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body is over the {limit // (1024 * 1024)} MB limit")
