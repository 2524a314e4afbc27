"""The HTTP ingress deployment: decode -> predict (model deployment) -> encode.

``__call__`` only routes (from serve_app/api/schema.py's ENDPOINTS, the source of the OpenAPI document)
and parses HTTP; ``classify`` and ``classify_many`` are the typed pipeline. Every failure leaves
as {"error", "detail"} JSON with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import ray
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from serve_app.api.openapi import openapi_spec
from serve_app.api.schema import DEFAULT_QUERY, ENDPOINTS, ClassifyQuery, FacesQuery
from serve_app.common.batching import QueueFull
from serve_app.common.decode import decode_image, inspect_image
from serve_app.common.errors import ApiError, model_unavailable, overloaded
from serve_app.common.metrics import IngressMetrics, VersionMetrics
from serve_app.common.protocol import (
    DetectedFace,
    Explanations,
    ImageRejected,
    ImageResult,
    ModelNotReady,
    Prediction,
    PreprocessSpec,
    SpecMismatch,
)
from serve_app.config import AppArgs
from serve_app.ingress.auth import KeyRing, KeySpec, Quotas
from serve_app.ingress.encode import encode_prediction
from serve_app.ingress.explain import (
    ExplainQuery,
    check_attributes,
    choose_attributes,
    encode_explanations,
    overlay_png,
    photo_for_overlay,
    png_panels,
)
from serve_app.ingress.faces import (
    MIN_DETECTABLE_PX,
    align_all,
    decode_photo,
    describe_face,
    face_side,
    in_image_pixels,
    smallest_findable,
)
from serve_app.ingress.model_client import (
    MAX_CALL_BYTES,
    DecodedImage,
    ModelClient,
    ModelDeployment,
    call_model,
)
from serve_app.ingress.multipart import parse_multipart
from serve_app.ingress.pages import (
    API_HEADERS,
    DOCS_HEADERS,
    DOCS_PAGE,
    PAGE,
    PAGE_HEADERS,
    docs_asset,
)
from serve_app.ingress.query import parse_query
from serve_app.rollout.config import Role
from serve_app.rollout.traffic import RolloutTraffic

logger = logging.getLogger("ray.serve")

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
DESCRIBE_TIMEOUT_S = 5.0
NO_DETECTOR_HINT = (
    "/metadata detector.last_error says why; `python -m train_job.face_detector --model-store "
    "<store>` writes one, then change the FaceDetector's user_config.reload and serve deploy"
)


@serve.deployment(name="Ingress")
class Ingress:
    def __init__(
        self,
        model: DeploymentHandle,
        args: dict[str, Any] | None = None,
        candidate: DeploymentHandle | None = None,
        monitor: DeploymentHandle | None = None,
        detector: DeploymentHandle | None = None,
    ):
        """model: the stable version's deployment; candidate: the rollout's (serve_app/rollout),
        sent nothing while the rollout is off; monitor: holds the rollout's settings (read every
        half second) and adds up its counts; detector: finds the faces of POST /faces."""
        self._args = AppArgs.model_validate(args or {})
        self._model = model  # the stable version: /explain, /metadata, /readyz ask it
        self._stable = self._deployment(model)
        self._candidate = self._deployment(candidate) if candidate is not None else None
        self._detector = detector
        # API keys (off without api_keys_file) and their quotas, shared through the monitor.
        self._keys = KeyRing(self._args.api_keys_file) if self._args.api_keys_file else None
        self._quotas = Quotas()
        self._traffic = RolloutTraffic(
            self._predict_on, monitor, VersionMetrics(), shared=self._quotas
        )
        self._reading_rollout = False
        self._metrics = IngressMetrics()
        self._explains_running = 0  # at most args.explain_max_in_flight
        self._labels: tuple[str, ...] | None = None  # the serving model's, as last seen
        self._routes: dict[str, dict[str, Handler]] = {}
        self._keyed = {(e.path, e.method) for e in ENDPOINTS if e.keyed}
        for endpoint in ENDPOINTS:
            self._routes.setdefault(endpoint.path, {})[endpoint.method] = getattr(
                self, endpoint.handler
            )
        self._openapi_body = JSONResponse(openapi_spec(self._args)).body

    def _deployment(self, handle: DeploymentHandle) -> ModelDeployment:
        client = ModelClient(
            handle,
            images_per_call=self._args.images_per_model_call,
            calls_in_flight=self._args.model_calls_in_flight,
            max_waiting_images=self._args.max_waiting_images,
        )
        return ModelDeployment(handle, client)

    async def __call__(self, request: Request) -> Response:
        if not self._reading_rollout:  # the first request: the replica's event loop runs
            self._reading_rollout = True
            self._traffic.start()
        path = route_of(request.url.path)
        methods = self._routes.get(path)
        handler = methods.get(request.method) if methods else None
        key: KeySpec | None = None
        try:
            if handler is None:
                if methods:
                    allowed = ", ".join(methods)
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{path} accepts {allowed}",
                        headers={"Allow": allowed},
                    )
                raise ApiError(404, "not_found", f"no route {path}; see /openapi.json")
            if self._keys is not None and (path, request.method) in self._keyed:
                key = self._admit(request)
            response = await handler(request)
        except ApiError as e:
            response = e.response()
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, path)
            response = ApiError(
                500, "internal_error", "unexpected server error (logged)"
            ).response()
        self._metrics.count(path if handler else "other", response.status_code)
        if self._keys is not None:
            self._metrics.count_key(key.name if key else None, response.status_code)
        for name, value in API_HEADERS.items():  # the page sets its own
            response.headers.setdefault(name, value)
        return response

    def _admit(self, request: Request) -> KeySpec:
        """The request's API key (401 without a valid one), within its request quota (429);
        its image quota is charged once the body says how many (_read_images)."""
        now = time.monotonic()
        key = self._keys.identify(request.headers, now)
        self._quotas.admit_request(key, now)
        request.state.api_key = key
        return key

    # ---- typed pipeline -------------------------------------------------------------------

    async def classify(
        self, image: bytes, query: ClassifyQuery = DEFAULT_QUERY, client: str | None = None
    ) -> dict[str, Any]:
        """decode -> predict -> encode for one image. ``client``: the caller's sticky key
        during a canary (one client, one version)."""
        prediction = await self._predict(image, client)
        return encode_prediction(prediction, query)

    async def classify_many(
        self, images: list[bytes], query: ClassifyQuery = DEFAULT_QUERY, client: str | None = None
    ) -> list[dict[str, Any]]:
        """One result or one per-image error for each image, in order; they batch together."""

        async def one(image: bytes) -> dict[str, Any]:
            try:
                return await self.classify(image, query, client)
            except ApiError as e:
                if e.status == 503:
                    raise  # overload is the whole request's answer, not a per-image one
                return e.as_dict()

        return list(await asyncio.gather(*(one(image) for image in images)))

    async def _predict(self, image: bytes, client: str | None = None) -> Prediction:
        if self._traffic.active:  # a rollout: the stable, the candidate or both (a copy)
            return await self._traffic.predict(image, client)
        return await self._predict_on("stable", image)

    async def _predict_on(self, role: Role, image: bytes) -> Prediction:
        target = self._stable if role == "stable" or self._candidate is None else self._candidate
        if self._args.decode_on == "model" and len(image) <= MAX_CALL_BYTES:
            inspect_image(image, self._args.max_image_pixels)  # a bad header is a 400 here
            result = await target.client.predict(image)
        else:
            result = await self._predict_decoded(target, image)
        if isinstance(result, ImageRejected):
            raise ApiError(400, result.code, result.detail)
        return result

    async def _predict_decoded(self, target: ModelDeployment, image: bytes) -> ImageResult:
        return await self._with_current_spec(
            target,
            image,
            lambda pixels, spec: target.client.predict(DecodedImage(pixels, spec)),
            lambda result: result if isinstance(result, SpecMismatch) else None,
        )

    async def _with_current_spec(
        self,
        target: ModelDeployment,
        image: bytes,
        send: Callable[[np.ndarray, PreprocessSpec], Awaitable[T]],
        mismatch_of: Callable[[T], SpecMismatch | None],
    ) -> T:
        """Decode with the spec of the version ``target`` serves now and send; a new version
        that prepares pixels differently answers SpecMismatch with its spec, and the image is
        decoded again. (During a rollout each version has its own spec.)"""
        for _ in range(3):
            spec = target.spec or await self._fetch_spec(target)
            answer = await send(await self._decode(image, spec), spec)
            mismatch = mismatch_of(answer)
            if mismatch is None:
                return answer
            target.spec = mismatch.current
        raise model_unavailable("the model changed its preprocessing during this request; retry")

    async def faces(self, image: bytes, query: FacesQuery) -> dict[str, Any]:
        """decode -> detect (FaceDetector) -> align each face -> predict -> encode. Faces are
        answered by the stable version, also during a rollout."""
        if self._detector is None:
            raise model_unavailable("no face detector is deployed with this application")
        args = self._args
        photo = await asyncio.to_thread(
            decode_photo, image, args.max_image_pixels, args.faces_detect_side
        )
        findable = smallest_findable(query.min_face_px, photo.copy_scale, photo.to_file)
        min_px_in_copy = max(
            MIN_DETECTABLE_PX, math.floor(findable / photo.to_file * photo.copy_scale)
        )
        try:
            found = await call_model(
                self._detector.detect, photo.copy, min_px_in_copy, what="face detector"
            )
        except ApiError as e:
            if e.code == "model_unavailable" and "is loaded" in e.detail:
                e.detail += f" ({NO_DETECTOR_HINT})"
            raise
        faces = [in_image_pixels(f, photo.copy_scale) for f in found.faces]
        faces = [f for f in faces if face_side(f) * photo.to_file >= findable]
        shown = faces[: min(query.max_faces or args.max_faces, args.max_faces)]
        predictions = await self._predict_aligned(photo.image, shown) if shown else []
        return {
            "faces": [
                {
                    **describe_face(f, photo.to_file, photo.width, photo.height),
                    **encode_prediction(p, query),
                }
                for f, p in zip(shown, predictions)
            ],
            "faces_found": len(faces),
            "min_face_px": findable,
            "image": {"width": photo.width, "height": photo.height},
            "detector": {"name": found.name, "version": found.version},
        }

    async def _predict_aligned(
        self, image: Image.Image, faces: list[DetectedFace]
    ) -> list[Prediction]:
        """Each face aligned with the spec of the version the stable deployment serves now and
        predicted; a version that prepares crops differently (SpecMismatch) gets them again."""
        target = self._stable
        for _ in range(3):
            spec = target.spec or await self._fetch_spec(target)
            crops = await asyncio.to_thread(align_all, image, faces, spec)
            results = await asyncio.gather(
                *(target.client.predict(DecodedImage(c, spec)) for c in crops)
            )
            mismatch = next((r for r in results if isinstance(r, SpecMismatch)), None)
            if mismatch is None:
                return results
            target.spec = mismatch.current
        raise model_unavailable("the model changed its preprocessing during this request; retry")

    async def explain(self, image: bytes, grid: int) -> Explanations:
        """decode -> explain on the model deployment, through this ingress's bound of
        explain_max_in_flight and the model replica's own explain queue (both: a fast 503)."""
        if self._explains_running >= self._args.explain_max_in_flight:
            raise overloaded(
                f"{self._explains_running} explanations already running on this replica "
                f"(explain_max_in_flight={self._args.explain_max_in_flight}); retry shortly"
            )
        self._explains_running += 1
        try:
            explanations = await self._explain_decoded(image, grid)
        finally:
            self._explains_running -= 1
        self._labels = explanations.labels
        return explanations

    async def _explain_decoded(self, image: bytes, grid: int) -> Explanations:
        """Decoded on the ingress whatever decode_on says (the overlay needs the photo here
        anyway); a SpecMismatch re-decodes with the new spec, as /classify does."""
        return await self._with_current_spec(
            self._stable,
            image,
            lambda pixels, spec: self._remote_explain(pixels[None], spec, grid),
            lambda answer: answer.mismatch,
        )

    async def _remote_explain(
        self, pixels: np.ndarray, spec: PreprocessSpec, grid: int
    ) -> Explanations:
        try:
            return await call_model(self._model.explain, pixels, spec, grid)
        except QueueFull as e:  # Ray re-raises the replica's exception as its own type
            raise overloaded(f"the model's explanation queue is full ({e}); retry shortly") from e

    async def _check_attributes(self, asked: tuple[str, ...]) -> None:
        """422 for a name the serving model does not have; labels last seen may be an older
        version's, so a miss asks the model again before refusing."""
        if self._labels is not None and all(a in self._labels for a in asked):
            return
        self._labels = tuple((await self._describe())["labels"])
        check_attributes(asked, self._labels)

    async def _decode(self, image: bytes, spec: PreprocessSpec) -> np.ndarray:
        start = time.perf_counter()
        pixels = await asyncio.to_thread(decode_image, image, spec, self._args.max_image_pixels)
        self._metrics.decode_seconds.observe(time.perf_counter() - start)
        return pixels  # (3, H, W) uint8

    async def _fetch_spec(self, target: ModelDeployment) -> PreprocessSpec:
        async with target.spec_lock:
            if target.spec is None:
                target.spec = await self._ask_model(target.handle.preprocess_spec)
        return target.spec

    async def _describe(self) -> dict[str, Any]:
        return await self._ask_model(self._model.describe)

    @staticmethod
    async def _ask_model(method) -> Any:
        try:
            return await asyncio.wait_for(method.remote(), DESCRIBE_TIMEOUT_S)
        except (asyncio.TimeoutError, ray.exceptions.RayError, ModelNotReady) as e:
            raise model_unavailable(f"the model deployment is not ready: {e}") from e

    # ---- HTTP endpoints ----------------------------------------------------------------------

    async def _classify_query(self, request: Request) -> ClassifyQuery:
        """The seed's answer without a query string (no parsing on the hot path); a named
        attribute the model lacks is a 422 before any work."""
        if not request.scope.get("query_string"):  # what request.url.query decodes
            return DEFAULT_QUERY
        query = parse_query(ClassifyQuery, request.query_params)
        if query.names:
            await self._check_attributes(query.names)
        return query

    async def _classify_endpoint(self, request: Request) -> Response:
        query = await self._classify_query(request)
        images = await self._read_images(request, max_images=1)
        return JSONResponse(await self.classify(images[0], query, self._client_key(request)))

    async def _faces_endpoint(self, request: Request) -> Response:
        query = parse_query(FacesQuery, request.query_params)
        if query.max_faces is not None and query.max_faces > self._args.max_faces:
            raise ApiError(
                422, "invalid_query", f"max_faces: at most {self._args.max_faces} on this service"
            )
        if query.names:
            await self._check_attributes(query.names)
        image = (await self._read_images(request, max_images=1))[0]
        return JSONResponse(await self.faces(image, query))

    async def _classify_batch_endpoint(self, request: Request) -> Response:
        query = await self._classify_query(request)
        images = await self._read_images(request, max_images=self._args.max_batch_images)
        results = await self.classify_many(images, query, self._client_key(request))
        return JSONResponse({"results": results})

    def _client_key(self, request: Request) -> str | None:
        """The sticky key of a canary (rollout.sticky_header), only while a rollout runs."""
        header = self._traffic.config.sticky_header
        return request.headers.get(header) if header and self._traffic.active else None

    async def _explain_endpoint(self, request: Request) -> Response:
        query = ExplainQuery.parse(request.query_params, self._args.explain_grid)
        image = (await self._read_images(request, max_images=1))[0]
        if query.attributes:  # a typo is a 422 before any work, not after
            await self._check_attributes(query.attributes)
        answer = await self.explain(image, query.grid)
        chosen = choose_attributes(
            query.attributes,
            answer.labels,
            answer.probabilities[0],
            answer.label_thresholds(),
            self._args.explain_max_attributes,
        )
        if query.format == "json":
            return JSONResponse(encode_explanations(answer, 0, chosen))
        spec = self._stable.spec or await self._fetch_spec(self._stable)
        photo = await asyncio.to_thread(photo_for_overlay, image, spec, self._args.max_image_pixels)
        png = await asyncio.to_thread(
            overlay_png, photo, png_panels(answer, 0, chosen), query.opacity
        )
        return Response(png, media_type="image/png")

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
            return self._charged(request, images)
        if media_type.startswith("image/"):
            return self._charged(request, [await self._read_body(request)])
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media_type or '(none)'!r}: send multipart/form-data with an 'image' "
            "field, or the raw image with Content-Type image/*",
        )

    def _charged(self, request: Request, images: list[bytes]) -> list[bytes]:
        """The images, charged to the request's key's image quota (429 past it)."""
        key = getattr(request.state, "api_key", None)
        if key is not None:
            self._quotas.admit_images(key, len(images), time.monotonic())
        return images

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
        meta = await self._describe()  # public fields only: no paths (face_attribute_model.py)
        meta["serving"]["decode_on"] = self._args.decode_on
        meta["serving"]["args_id"] = self._args.fingerprint()
        meta["rollout"] = await self._rollout_state()
        meta["detector"] = await self._detector_state()
        return JSONResponse(meta)

    async def _detector_state(self) -> dict[str, Any] | None:
        """The face detector's version and pin, None when none is deployed or it is not
        answering (its own last_error says why it has no detector loaded)."""
        if self._detector is None:
            return None
        try:
            return await asyncio.wait_for(self._detector.describe.remote(), DESCRIBE_TIMEOUT_S)
        except Exception as e:  # a replica restarting: the rest of /metadata still answers
            logger.warning("face detector did not describe itself: %s", e)
            return None

    async def _rollout(self, request: Request) -> Response:
        return JSONResponse(await self._rollout_state())

    async def _rollout_state(self) -> dict[str, Any]:
        """The rollout settings of this replica and every replica's counts, per step, role and
        version (serve_app/rollout/stats.py); ``versions`` empty if the monitor cannot answer."""
        try:
            return await self._traffic.snapshot()
        except Exception as e:  # a timeout, the monitor's replica restarting: counts come back
            logger.warning("rollout monitor unavailable: %s", e)
            return {"config": self._traffic.config.model_dump(), "versions": []}

    async def _openapi(self, request: Request) -> Response:
        return Response(self._openapi_body, media_type="application/json")

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def _docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE, headers=DOCS_HEADERS)

    async def _docs_asset(self, request: Request) -> Response:
        return docs_asset(request.url.path.rsplit("/", 1)[-1])


DOCS_ASSETS_ROUTE = next(e.path for e in ENDPOINTS if e.handler == "_docs_asset")
DOCS_ASSETS_PREFIX = DOCS_ASSETS_ROUTE.split("{")[0]


def route_of(path: str) -> str:
    """A request path -> its ENDPOINTS path ("/docs/static/x.js" -> "/docs/static/{asset}")."""
    path = path.rstrip("/") or "/"
    if path.startswith(DOCS_ASSETS_PREFIX):
        return DOCS_ASSETS_ROUTE
    return path


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body is over the {limit // (1024 * 1024)} MB limit")
