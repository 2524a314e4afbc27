"""The HTTP API's one typed source: every route with its query, body, response model and error
codes. The ingress dispatches from ``ENDPOINTS`` and serve_app/api/openapi.py generates the OpenAPI
document from the same declarations and the pydantic models' JSON schemas, so the two cannot
drift apart (tests/test_openapi.py validates real responses of every route against it).

Why not FastAPI (Ray Serve's ``@serve.ingress`` convention): measured in-process on this box
(/tmp-free ASGI loop, 20 kB raw body, JSON answer of 40 probabilities), FastAPI's dispatch took
131 us per request against 35 us for this table's lookup plus Starlette's Request/Response, i.e.
+95 us on every /classify, about 2% of the ingress's CPU per request at saturation with the light
model; the table keeps the hot path where it was (docs/api.md has the end-to-end A/B).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.rollout.config import RolloutConfig

# ---- error codes, by status: the document lists each; tests check every one is reachable ------

ERROR_CODES: dict[int, dict[str, str]] = {
    400: {
        "empty_image": "the image is empty (0 bytes)",
        "undecodable_image": "the bytes are not an image Pillow can decode (or are truncated)",
        "image_too_large": "more pixels than max_image_pixels (a decompression bomb)",
        "bad_multipart": "malformed multipart/form-data body",
    },
    401: {
        "unauthorized": "no API key, or one this service does not know (the service has keys: "
        "send Authorization: Bearer <key> or X-API-Key)"
    },
    404: {"not_found": "no such route"},
    405: {"method_not_allowed": "the route exists with another method (see the Allow header)"},
    413: {
        "payload_too_large": "body over max_body_mb",
        "too_many_images": "more 'image' fields than the route accepts",
        "too_many_parts": "more multipart parts than the route accepts (images + 8)",
    },
    415: {"unsupported_media_type": "neither multipart/form-data nor image/*"},
    429: {
        "rate_limited": "the API key is over its requests-per-second or images-per-minute "
        "quota; retry after Retry-After"
    },
    422: {
        "missing_image": "multipart body without an 'image' field",
        "unknown_attribute": "an attribute the serving model does not have (the detail lists "
        "the valid names)",
        "invalid_query": "an unknown query parameter or a value out of range",
    },
    500: {"internal_error": "unexpected server error (logged)"},
    503: {
        "overloaded": "the model or this replica is at capacity; retry after Retry-After",
        "model_unavailable": "no model (or no ingress replica: HAProxy answers) is ready; "
        "retry after Retry-After",
    },
}
IMAGE_ERRORS = (400, 413, 415, 422, 503)
ALWAYS = (404, 405, 500)  # any route: unknown path, wrong method, a bug


# ---- response models --------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, see the route's responses")
    detail: str = Field(description="what went wrong, for a person")


class ModelRef(BaseModel):
    name: str
    version: str


class LabelEntry(BaseModel):
    label_id: int = Field(description="index in the model's label list (/metadata labels)")
    label: str
    probability: float = Field(ge=0, le=1)
    threshold: float = Field(
        description="the threshold this label was judged by: the ?threshold= number, or the "
        "label's own tuned threshold, or the model's single one"
    )


class ClassifyResult(BaseModel):
    labels: list[LabelEntry] = Field(
        description="the attributes at or above their threshold, most probable first; with "
        "top_k: the k most probable whatever their threshold"
    )
    probabilities: dict[str, float] = Field(
        description="every (or every asked) attribute's probability, in the model's label order"
    )
    model: ModelRef


class BatchResult(BaseModel):
    results: list[ClassifyResult | ErrorBody] = Field(
        description="one per 'image' field, in order; an image that fails has its error here "
        "(the request still answers 200)"
    )


class Landmarks(BaseModel):
    """(x, y) in the photo's pixels, left and right as seen in the photo."""

    left_eye: list[float]
    right_eye: list[float]
    nose: list[float]
    mouth_left: list[float]
    mouth_right: list[float]


class Face(ClassifyResult):
    """One face: where it is, and its attributes (as /classify answers for an aligned crop)."""

    box: list[float] = Field(
        description="[x0, y0, x1, y1] in the photo's pixels (as its EXIF orientation shows it)"
    )
    landmarks: Landmarks
    score: float = Field(ge=0, le=1, description="the detector's confidence that it is a face")


class ImageSize(BaseModel):
    width: int
    height: int


class FacesResult(BaseModel):
    faces: list[Face] = Field(description="most confident first; empty when no face was found")
    faces_found: int = Field(description="faces found at or above min_face_px, before max_faces")
    min_face_px: int = Field(
        description="the smallest face this photo could be searched for, in its pixels"
    )
    image: ImageSize
    detector: ModelRef


class Explanation(BaseModel):
    attribute: str
    probability: float
    map: list[list[float]] = Field(
        description="grid rows, top first, of grid non-negative probability drops"
    )


class ExplainResult(BaseModel):
    explanations: list[Explanation]
    model: ModelRef
    method: Literal["occlusion"]
    grid: list[int] = Field(description="[rows, columns]")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    model: ModelRef


class PinState(BaseModel):
    """The version this deploy pinned (model_uri resolved once at deploy, never per replica)."""

    version: str = Field(description="the pinned version, served by every replica")
    pinned_at: str = Field(description="when the deploy resolved model_uri (ISO 8601, UTC)")
    generation: int = Field(description="> 0: follow_latest moved the pin that many times")
    follow_latest: bool = Field(description="user_config.follow_latest: switch with `latest`")
    reload: int = Field(description="user_config.reload: change it to make replicas look again")
    latest: str | None = Field(description="the version the store's `latest` names now")
    newer_available: bool = Field(description="`latest` names another version than the pin")
    hint: str | None = Field(description="how to roll the newer version out, when there is one")
    serves_pinned: bool = Field(description="the answering replica serves the pinned version")


class Serving(BaseModel):
    """How this deployment serves the model (fields may be added)."""

    model_config = ConfigDict(extra="allow")
    config_id: str | None
    args_id: str
    decode_on: Literal["ingress", "model"]
    last_error: str | None
    device: str
    dtype: str
    max_batch_size: int
    batch_wait_timeout_s: float
    batch_sizes: dict[str, int]
    replica_id: str
    pin: PinState | None


class ServiceFigures(BaseModel):
    """The model replicas' own time per forward pass, for passes of one batch-size bucket."""

    batch: str = Field(description="batch sizes of the bucket, e.g. 5-8")
    images: int = Field(description="images that rode in such passes (warm-up passes excluded)")
    p50_ms: float | None
    p99_ms: float | None


class VersionFigures(BaseModel):
    """One (step, role, version)'s counts, summed over the ingress replicas."""

    step: str
    role: Literal["stable", "candidate"]
    version: str
    requests: int = Field(description="answers asked of this version, comparison copies included")
    errors: int = Field(description="5xx and lost calls among them (a bad image is not one)")
    error_rate: float | None
    p50_ms: float | None = Field(description="ingress -> version -> ingress, 15% buckets")
    p99_ms: float | None
    compared: int = Field(description="candidate: images both versions answered, compared")
    agreement: float | None = Field(
        description="candidate: share of label decisions equal to the stable's"
    )
    mean_abs_dp: float | None = Field(description="candidate: mean |p_candidate - p_stable|")
    copies_skipped: int
    service: list[ServiceFigures] = Field(
        description="the version's replicas' time per forward pass by batch size (what the "
        "rollout's latency rule compares)"
    )


class RolloutState(BaseModel):
    """The rollout settings of the replica that answered and every replica's counts."""

    config: RolloutConfig
    versions: list[VersionFigures] = Field(
        description="per step (most recent 16), role and version; empty when no rollout ran "
        "or the monitor is not answering"
    )


class DetectorState(BaseModel):
    """The face detector of POST /faces: which one answers, and why none does."""

    name: str | None
    version: str | None
    method: str | None
    landmarks: list[str]
    source: str | None = Field(description="where its weights come from, and their licence")
    device: str
    last_error: str | None = Field(description="why the last artifact was refused, if it was")
    pin: PinState | None


class Metadata(BaseModel):
    """The artifact's public metadata (an allow-list: no paths) and the serving status."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    labels: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    threshold: float
    output_kind: str
    backbone: str
    created_at: str | None
    format_version: int | None
    metrics: dict[str, float]
    training: dict[str, Any]
    serving: Serving
    rollout: RolloutState
    detector: DetectorState | None = Field(
        description="the face detector (null when none is deployed or it is not answering)"
    )


# ---- query parameters -------------------------------------------------------------------------

Probability = Annotated[float, Field(gt=0, lt=1)]


class ClassifyQuery(BaseModel):
    """Query of /classify and /classify/batch; without one the answer is the seed's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    attributes: str | None = Field(
        default=None,
        description="comma-separated attribute names (e.g. Smiling,Eyeglasses): answer only "
        "these; an unknown name is a 422 unknown_attribute listing the valid ones",
        examples=["Smiling,Eyeglasses"],
    )
    threshold: Literal["tuned"] | Probability = Field(
        default="tuned",
        description="a number in (0, 1) for every label, or tuned: each label's own threshold "
        "when the artifact has them, else the model's single one",
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="answer the k most probable (asked) attributes in labels whatever their "
        "threshold; each entry's threshold says whether it passed",
    )

    @property
    def names(self) -> tuple[str, ...]:
        """(attribute, ...) asked for, in order, without repeats; () = all."""
        if not self.attributes:
            return ()
        return tuple(dict.fromkeys(a.strip() for a in self.attributes.split(",") if a.strip()))


class FacesQuery(ClassifyQuery):
    """Query of /faces: the /classify parameters, applied to each face, and the detection's."""

    max_faces: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="answer at most this many faces, the most confident first (default and "
        "ceiling: the service's max_faces); faces_found says how many were found",
    )
    min_face_px: int = Field(
        default=20,
        ge=12,
        le=4096,
        description="ignore faces smaller than this (the shorter side of their box, in the "
        "photo's pixels); a photo larger than the detector's side is detected on a copy, so "
        "the answer's min_face_px may be larger",
    )


class ExplainParams(BaseModel):
    """Query of /explain (parsed by serve_app.explain.ExplainQuery; declared here for the
    document, tests/test_openapi.py checks both name the same parameters)."""

    model_config = ConfigDict(extra="forbid")
    attribute: list[str] = Field(
        default=[],
        description="repeatable; default: the most probable attributes at or above their "
        "threshold (the label's tuned one, as /classify judges), at most explain_max_attributes "
        "(the most probable one when none is)",
    )
    format: Literal["json", "png"] = "json"
    grid: int = Field(
        default=8, ge=2, le=16, description="cells per side of the map; cost grows with its square"
    )
    opacity: float = Field(
        default=0.6, ge=0, le=1, description="format=png: hottest cells' opacity"
    )


DEFAULT_QUERY = ClassifyQuery()


# ---- the routes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One route: ``handler`` names the Ingress method; ``body`` the accepted image bodies
    ("image": one, multipart or raw; "images": repeated multipart fields)."""

    method: str
    path: str
    handler: str
    summary: str
    response: type[BaseModel] | None  # None: not JSON (HTML, PNG)
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    body: Literal["image", "images"] | None = None
    description: str = ""
    media_type: str = "application/json"
    extra_media: dict[str, str] = field(default_factory=dict)
    # Needs an API key when the service has keys (args.api_keys_file): 401 / 429 then.
    keyed: bool = True


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/classify",
        "_classify_endpoint",
        "Classify one image",
        ClassifyResult,
        IMAGE_ERRORS,
        ClassifyQuery,
        "image",
    ),
    Endpoint(
        "POST",
        "/classify/batch",
        "_classify_batch_endpoint",
        "Classify several images (repeated 'image' fields), in order",
        BatchResult,
        IMAGE_ERRORS,
        ClassifyQuery,
        "images",
    ),
    Endpoint(
        "POST",
        "/faces",
        "_faces_endpoint",
        "Find every face in a photo and classify each one",
        FacesResult,
        IMAGE_ERRORS,
        FacesQuery,
        "image",
        description="Each face is found (its box, five landmarks and a score), aligned to the "
        "crop the model was trained on, and answered as /classify answers. A photo larger "
        "than the detector's side is searched on a downscaled copy. See docs/faces.md.",
    ),
    Endpoint(
        "POST",
        "/explain",
        "_explain_endpoint",
        "Per-attribute explanation maps (occlusion sensitivity) of one image",
        ExplainResult,
        IMAGE_ERRORS,
        ExplainParams,
        "image",
        description="map[i][j] = how much the attribute's probability falls when the patch "
        "centred on cell (i, j) of a grid x grid split of the image is hidden (2x2 cells, set "
        "to the training mean); row 0 at the top. format=png returns the photo with each map "
        "laid over it, side by side. See docs/explain.md.",
        extra_media={"image/png": "format=png"},
    ),
    Endpoint("GET", "/healthz", "_healthz", "The ingress is alive", Health, keyed=False),
    Endpoint(
        "GET", "/readyz", "_readyz", "The model deployment answers", Ready, (503,), keyed=False
    ),
    Endpoint(
        "GET",
        "/metadata",
        "_metadata",
        "Model name, version, labels, input size, thresholds, metrics, serving status",
        Metadata,
        (503,),
    ),
    Endpoint(
        "GET",
        "/rollout",
        "_rollout",
        "The rollout in progress: settings, and per version answers, errors, p50/p99, agreement",
        RolloutState,
        description="Shadow and canary rollouts of a candidate version (docs/rollout.md); "
        "python -m serve_app.rollout reads its figures here.",
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        "_openapi",
        "This document",
        None,
        media_type="application/json",
        keyed=False,
    ),
    Endpoint(
        "GET", "/", "_page", "Web page to try the model", None, media_type="text/html", keyed=False
    ),
    Endpoint(
        "GET",
        "/docs",
        "_docs",
        "Swagger UI on this document",
        None,
        media_type="text/html",
        keyed=False,
    ),
    Endpoint(
        "GET",
        "/docs/static/{asset}",
        "_docs_asset",
        "Swagger UI's files (served here: no CDN)",
        None,
        media_type="text/javascript",
        extra_media={"text/css": "swagger-ui.css", "image/png": "favicon-32x32.png"},
        keyed=False,
    ),
)
