"""A Python client for the face-attributes service: sync ``Client``, async ``AsyncClient``, a CLI.

Importable without Ray (only httpx, and Pillow when the caller hands in a PIL image), so a caller
installs nothing of the serving stack::

    from serve_app.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.classify("photo.jpg", attributes=["Smiling", "Eyeglasses"])
        for label in result.labels:  # the attributes judged present, most probable first
            print(label.label, label.probability, label.threshold)

    python -m serve_app.client photo.jpg more.jpg --url http://127.0.0.1:8000 [--json]

Retries (both clients): a 503 (overloaded, model_unavailable, or the proxy's own) is retried after
the server's ``Retry-After``; a connection refused or dropped by a restarting server after a
backoff of 0.25 s doubling to 4 s. At most ``retries`` retries and ``max_retry_wait_s`` seconds of
waiting in all per call; a ``Retry-After`` longer than what is left of that budget ends the call
at once (``Overloaded.retry_after`` says how long the server asked for) rather than come back
early. A 4xx is never retried. Every error response raises the ``ApiError`` subclass of its
``error`` code; see docs/client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import io
import json
import os
import re
import sys
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serve_app.api import schema

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "FACE_API_KEY"
# AppArgs.max_batch_images' default. A server with a smaller limit answers 413 too_many_images
# ("... at most N per request") and the client keeps N from then on.
DEFAULT_BATCH_LIMIT = 16
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 4.0
# 503: overloaded / model_unavailable / the proxy has no live replica; 502: the proxy lost the
# replica mid-request (a restart); 429: the key's quota, after its Retry-After. Classification
# is a pure function, so a repeat is harmless.
RETRY_STATUSES = frozenset({429, 502, 503})
RETRY_TRANSPORT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)

# path | bytes | PIL.Image.Image | binary file object
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Any


# ---- typed results: the API's own models (serve_app/api/schema.py), with a few helpers ---------


class Classification(schema.ClassifyResult):
    """``labels``: the attributes at or above their threshold, most probable first;
    ``probabilities``: {attribute: probability} for every attribute the server returned."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Classification:
        return cls.model_validate(body)

    def present(self, attribute: str) -> bool:
        return any(label.label == attribute for label in self.labels)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Faces(schema.FacesResult):
    """POST /faces: ``faces`` (box, landmarks, score, labels, probabilities, model each), most
    confident first; ``faces_found`` before max_faces; ``min_face_px`` searched for."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Faces:
        return cls.model_validate(body)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


ModelRef = schema.ModelRef
Label = schema.LabelEntry
Face = schema.Face


# ---- errors --------------------------------------------------------------------------------------


class ClientError(Exception):
    """Anything this client raises about the service."""


class NoResponse(ClientError):
    """No HTTP answer: the connection failed on every try (``retries``, ``max_retry_wait_s``),
    or a try timed out (not retried: the server may still be working on it)."""


class ApiError(ClientError):
    """An error answer ``{"error": code, "detail": text}``; subclasses are chosen by ``code``."""

    default_status = 0  # the status of this class's codes, for per-image errors (no status)

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class ImageRejected(ApiError):
    """400 empty_image, undecodable_image, image_too_large: this image, not the request."""

    default_status = 400


class BadMultipart(ApiError):
    default_status = 400


class NotFound(ApiError):
    default_status = 404


class MethodNotAllowed(ApiError):
    default_status = 405


class PayloadTooLarge(ApiError):
    """413 payload_too_large: the body is over the server's max_body_mb."""

    default_status = 413


class TooManyImages(ApiError):
    default_status = 413


class TooManyParts(ApiError):
    default_status = 413


class UnsupportedMediaType(ApiError):
    default_status = 415


class MissingImage(ApiError):
    default_status = 422


class InvalidQuery(ApiError):
    default_status = 422


class UnknownAttribute(ApiError):
    """422 unknown_attribute: ``detail`` lists the valid names."""

    default_status = 422


class ServerError(ApiError):
    default_status = 500


class Unauthorized(ApiError):
    """401: the service has API keys and this client sent none it knows (``api_key=`` or
    FACE_API_KEY)."""

    default_status = 401


class RateLimited(ApiError):
    """429 after the retries ran out: the key's quota (``retry_after``: how long it asked)."""

    default_status = 429


class Overloaded(ApiError):
    """503 after the retries ran out (or the server asked to wait longer than the budget)."""

    default_status = 503


class ModelUnavailable(Overloaded):
    """503 model_unavailable: no model loaded or it is changing; an Overloaded for callers that
    only care that the service cannot answer now."""


ERROR_CLASSES: dict[str, type[ApiError]] = {
    "empty_image": ImageRejected,
    "undecodable_image": ImageRejected,
    "image_too_large": ImageRejected,
    "bad_multipart": BadMultipart,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "payload_too_large": PayloadTooLarge,
    "too_many_images": TooManyImages,
    "too_many_parts": TooManyParts,
    "unsupported_media_type": UnsupportedMediaType,
    "missing_image": MissingImage,
    "invalid_query": InvalidQuery,
    "unknown_attribute": UnknownAttribute,
    "internal_error": ServerError,
    "overloaded": Overloaded,
    "model_unavailable": ModelUnavailable,
    "unauthorized": Unauthorized,
    "rate_limited": RateLimited,
}


def error_class(status: int, code: str) -> type[ApiError]:
    """The class of ``code``; a code this client does not know gets its status's class."""
    if code in ERROR_CLASSES:
        return ERROR_CLASSES[code]
    if status == 503:
        return Overloaded
    if status >= 500:
        return ServerError
    return ApiError


def error_from_response(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        code, detail = str(body["error"]), str(body.get("detail", ""))
    except (ValueError, KeyError, TypeError):  # not our JSON: a proxy's page, say
        code, detail = f"http_{response.status_code}", response.text[:300]
    cls = error_class(response.status_code, code)
    return cls(response.status_code, code, detail, retry_after_s(response))


def per_image_error(entry: dict[str, Any]) -> ApiError:
    """A ``{"error", "detail"}`` entry of /classify/batch's results: always about one image."""
    code = str(entry["error"])
    cls = ERROR_CLASSES.get(code, ImageRejected)
    return cls(cls.default_status or 400, code, str(entry.get("detail", "")))


# ---- retries -------------------------------------------------------------------------------------


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RetryBudget:
    """Per call: at most ``retries`` retries and ``max_wait_s`` seconds of waiting in all."""

    def __init__(self, retries: int, max_wait_s: float):
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.attempts = 0
        self.waited_s = 0.0

    def wait_after(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None: give up. ``response`` None means the
        try failed to connect or lost the connection."""
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        asked = retry_after_s(response) if response is not None else None
        wait = (
            asked if asked is not None else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self.attempts)
        )
        if self.attempts >= self.retries or self.waited_s + wait > self.max_wait_s:
            return None
        self.attempts += 1
        self.waited_s += wait
        return wait


# ---- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    content_type: str

    def part(self) -> tuple[str, tuple[str, bytes, str]]:
        return ("image", (self.filename, self.data, self.content_type))


MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_content_type(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, content_type in MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"  # the server decides what it is (400 if nothing)


def encode_pil(image: Any) -> bytes:
    """RGB/greyscale as JPEG quality 95 (what CelebA's photos are; ~10x smaller than PNG for a
    photo); anything else (alpha, palette, 16-bit) as PNG, losslessly, alpha included: the server
    composites transparency on white."""
    buf = io.BytesIO()
    if image.mode in ("RGB", "L"):
        image.save(buf, "JPEG", quality=95)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def is_pil_image(value: Any) -> bool:
    # A caller holding a PIL image has imported PIL.Image; no import here otherwise.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def to_upload(image: ImageInput, index: int = 0) -> Upload:
    """A path (str or PathLike), bytes, a PIL image or a binary file object -> one upload."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data, filename = path.read_bytes(), path.name
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data, filename = bytes(image), f"image-{index}"
    elif is_pil_image(image):
        data, filename = encode_pil(image), f"image-{index}"
    elif hasattr(image, "read"):
        data = image.read()
        filename = Path(str(getattr(image, "name", f"image-{index}"))).name
    else:
        raise TypeError(f"image {index}: a path, bytes, PIL.Image or file, not {type(image)}")
    return Upload(filename, data, sniff_content_type(data))


def query_params(
    attributes: str | Sequence[str] | None = None,
    threshold: float | str | None = None,
    top_k: int | None = None,
) -> dict[str, str]:
    """``attributes=Smiling,Eyeglasses&threshold=0.3|tuned&top_k=5``; None: the server's default."""
    params: dict[str, str] = {}
    if attributes is not None:
        params["attributes"] = attributes if isinstance(attributes, str) else ",".join(attributes)
    if threshold is not None:
        params["threshold"] = threshold if isinstance(threshold, str) else repr(float(threshold))
    if top_k is not None:
        params["top_k"] = str(int(top_k))
    return params


def faces_params(
    attributes: str | Sequence[str] | None,
    threshold: float | str | None,
    top_k: int | None,
    max_faces: int | None,
    min_face_px: int | None,
) -> dict[str, str]:
    params = query_params(attributes, threshold, top_k)
    if max_faces is not None:
        params["max_faces"] = str(int(max_faces))
    if min_face_px is not None:
        params["min_face_px"] = str(int(min_face_px))
    return params


BatchResult = Classification | ApiError
# A batch plan yields the next chunk to send and receives its answer: the response body or the
# ApiError it raised. Shared by Client and AsyncClient, which only do the I/O.
BatchPlan = Generator[list[Upload], dict[str, Any] | ApiError, list[BatchResult]]


def smaller_limit(error: ApiError, sent: int) -> int:
    """The server's limit from '... at most N per request', else half of what was refused."""
    found = re.search(r"at most (\d+)", error.detail)
    limit = int(found.group(1)) if found else sent // 2
    return max(1, min(limit, sent - 1))


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        retries: int = 6,
        max_retry_wait_s: float = 30.0,
        batch_size: int | None = None,
        api_key: str | None = None,
    ):
        """``timeout``: seconds per HTTP try; ``retries``/``max_retry_wait_s``: see the module
        docstring; ``batch_size``: images per /classify/batch request (default 16, lowered to
        the server's limit when it refuses more); ``api_key``: for a service with keys
        (default: the FACE_API_KEY environment variable), sent as Authorization: Bearer."""
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.batch_limit = batch_size or DEFAULT_BATCH_LIMIT

    def _budget(self) -> RetryBudget:
        return RetryBudget(self.retries, self.max_retry_wait_s)

    def _wait_or_raise(
        self, budget: RetryBudget, path: str, outcome: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before the next try of a failed one; raises when there is none."""
        if isinstance(outcome, httpx.Response):
            wait = budget.wait_after(outcome)
            if wait is None:
                raise error_from_response(outcome)
            return wait
        wait = budget.wait_after(None) if isinstance(outcome, RETRY_TRANSPORT_ERRORS) else None
        if wait is None:
            raise NoResponse(
                f"{self.url}{path}: {outcome!r} after {budget.attempts} retries"
            ) from outcome
        return wait

    def _batch_plan(self, images: Iterable[ImageInput]) -> BatchPlan:
        """Chunks of ``batch_limit``; a 413 for the count lowers the limit and sends the same
        images again; a 413 for the body size splits that chunk in two, down to one image,
        whose 413 is then its own result in place."""
        pending = list(images)
        results: list[BatchResult] = []
        while len(results) < len(pending):
            start = len(results)
            chunk_inputs = pending[start : start + self.batch_limit]
            chunk = [to_upload(image, start + i) for i, image in enumerate(chunk_inputs)]
            answer = yield chunk
            if isinstance(answer, (TooManyImages, TooManyParts)) and len(chunk) > 1:
                self.batch_limit = smaller_limit(answer, len(chunk))
                continue
            if isinstance(answer, PayloadTooLarge):
                results.extend((yield from self._split_plan(chunk, answer)))
                continue
            if isinstance(answer, ApiError):
                raise answer
            results.extend(batch_results(answer, len(chunk)))
        return results

    def _split_plan(self, chunk: list[Upload], error: PayloadTooLarge) -> BatchPlan:
        if len(chunk) == 1:
            return [error]
        results: list[BatchResult] = []
        for half in (chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]):
            answer = yield half
            if isinstance(answer, PayloadTooLarge):
                results.extend((yield from self._split_plan(half, answer)))
            elif isinstance(answer, ApiError):
                raise answer
            else:
                results.extend(batch_results(answer, len(half)))
        return results


def plan_step(
    plan: BatchPlan, answer: dict[str, Any] | ApiError | None
) -> tuple[list[Upload] | None, list[BatchResult]]:
    """Advance a batch plan: (the next chunk to send, []) or (None, the results)."""
    try:
        return (next(plan) if answer is None else plan.send(answer)), []
    except StopIteration as done:
        return None, done.value


def batch_results(body: dict[str, Any], expected: int) -> list[BatchResult]:
    entries = body["results"]
    if len(entries) != expected:
        raise ClientError(f"/classify/batch answered {len(entries)} results for {expected} images")
    return [per_image_error(e) if "error" in e else Classification.from_json(e) for e in entries]


def _multipart(uploads: list[Upload]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [u.part() for u in uploads]


# ---- the clients -------------------------------------------------------------------------------


class Client(_Base):
    """Synchronous client; a context manager (or call ``close()``). One connection pool, safe to
    share between threads (httpx.Client is)."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any):
        super().__init__(url, **options)
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout, headers=self.headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def classify(
        self,
        image: ImageInput,
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
    ) -> Classification:
        """One image -> its Classification; an error answer raises its ApiError subclass."""
        files = _multipart([to_upload(image)])
        params = query_params(attributes, threshold, top_k)
        return Classification.from_json(self._request("POST", "/classify", params, files))

    def classify_many(
        self,
        images: Iterable[ImageInput],
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
    ) -> list[BatchResult]:
        """One result per image, in order: a Classification, or the image's own ApiError (say
        ImageRejected) in its place. Errors about the whole request (503 after retries,
        a 422 for the query) raise."""
        params = query_params(attributes, threshold, top_k)
        plan = self._batch_plan(images)
        chunk, results = plan_step(plan, None)
        while chunk is not None:
            try:
                answer: dict[str, Any] | ApiError = self._request(
                    "POST", "/classify/batch", params, _multipart(chunk)
                )
            except ApiError as e:
                answer = e
            chunk, results = plan_step(plan, answer)
        return results

    def faces(
        self,
        image: ImageInput,
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
        max_faces: int | None = None,
        min_face_px: int | None = None,
    ) -> Faces:
        """POST /faces: every face of a photo, each with its box, landmarks and attributes."""
        files = _multipart([to_upload(image)])
        params = faces_params(attributes, threshold, top_k, max_faces, min_face_px)
        return Faces.from_json(self._request("POST", "/faces", params, files))

    def metadata(self) -> dict[str, Any]:
        """GET /metadata: the serving model's public metadata (labels, threshold(s), version)."""
        return self._request("GET", "/metadata")

    def _request(
        self, method: str, path: str, params: dict[str, str] | None = None, files: Any = None
    ) -> Any:
        budget = self._budget()
        while True:
            try:
                response = self._http.request(method, path, params=params, files=files)
            except httpx.TransportError as e:
                time.sleep(self._wait_or_raise(budget, path, e))
                continue
            if response.is_success:
                return response.json()
            time.sleep(self._wait_or_raise(budget, path, response))


class AsyncClient(_Base):
    """The same API as ``Client`` with ``await``; an async context manager."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any):
        super().__init__(url, **options)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, headers=self.headers
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def classify(
        self,
        image: ImageInput,
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
    ) -> Classification:
        upload = await asyncio.to_thread(to_upload, image)  # a file read or a PIL encode
        params = query_params(attributes, threshold, top_k)
        body = await self._request("POST", "/classify", params, _multipart([upload]))
        return Classification.from_json(body)

    async def classify_many(
        self,
        images: Iterable[ImageInput],
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
    ) -> list[BatchResult]:
        params = query_params(attributes, threshold, top_k)
        plan = self._batch_plan(images)
        # The plan reads files and encodes PIL images: off the event loop.
        chunk, results = await asyncio.to_thread(plan_step, plan, None)
        while chunk is not None:
            try:
                answer: dict[str, Any] | ApiError = await self._request(
                    "POST", "/classify/batch", params, _multipart(chunk)
                )
            except ApiError as e:
                answer = e
            chunk, results = await asyncio.to_thread(plan_step, plan, answer)
        return results

    async def faces(
        self,
        image: ImageInput,
        attributes: str | Sequence[str] | None = None,
        threshold: float | str | None = None,
        top_k: int | None = None,
        max_faces: int | None = None,
        min_face_px: int | None = None,
    ) -> Faces:
        files = _multipart([to_upload(image)])
        params = faces_params(attributes, threshold, top_k, max_faces, min_face_px)
        return Faces.from_json(await self._request("POST", "/faces", params, files))

    async def metadata(self) -> dict[str, Any]:
        return await self._request("GET", "/metadata")

    async def _request(
        self, method: str, path: str, params: dict[str, str] | None = None, files: Any = None
    ) -> Any:
        budget = self._budget()
        while True:
            try:
                response = await self._http.request(method, path, params=params, files=files)
            except httpx.TransportError as e:
                await asyncio.sleep(self._wait_or_raise(budget, path, e))
                continue
            if response.is_success:
                return response.json()
            await asyncio.sleep(self._wait_or_raise(budget, path, response))


# ---- CLI -----------------------------------------------------------------------------------------


def metadata_thresholds(meta: dict[str, Any]) -> dict[str, float]:
    """{attribute: threshold} from /metadata: per-attribute ``thresholds`` (a map, or a list in
    ``labels`` order) where the model has them, else the single ``threshold`` for all."""
    labels = meta.get("labels") or []
    tuned = meta.get("thresholds")
    if isinstance(tuned, dict):
        return {str(k): float(v) for k, v in tuned.items()}
    if isinstance(tuned, list) and len(tuned) == len(labels):
        return {label: float(t) for label, t in zip(labels, tuned)}
    if isinstance(meta.get("threshold"), (int, float)):
        return dict.fromkeys(labels, float(meta["threshold"]))
    return {}


def table(result: Classification, fallback_thresholds: dict[str, float]) -> str:
    """Rows: every attribute returned, most probable first; yes/no is the server's judgement."""
    present = {label.label: label for label in result.labels}
    lines = [f"{'label':<22} {'probability':>11} {'threshold':>9}  present"]
    for name, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
        judged = present.get(name)
        threshold = judged.threshold if judged and judged.threshold is not None else None
        threshold = fallback_thresholds.get(name) if threshold is None else threshold
        shown = "-" if threshold is None else f"{threshold:.3f}"
        lines.append(f"{name:<22} {p:>11.4f} {shown:>9}  {'yes' if judged else 'no'}")
    return "\n".join(lines)


def parse_threshold(text: str) -> float | str:
    if text == "tuned":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number in (0, 1) or 'tuned'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number in (0, 1) or 'tuned'")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.client",
        description="Classify face photos with the face-attributes service and print each "
        "attribute's probability, threshold and whether it is judged present.",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--url", default=os.environ.get("FACE_ATTRIBUTES_URL", DEFAULT_URL))
    parser.add_argument("--attributes", help="comma-separated attribute names (default: all)")
    parser.add_argument("--threshold", type=parse_threshold, help="a number in (0, 1) or 'tuned'")
    parser.add_argument("--top-k", type=int, help="at most this many attributes judged present")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP try")
    parser.add_argument("--retries", type=int, default=6, help="retries on 503 / connection loss")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"for a service with API keys (default: the {API_KEY_ENV} environment variable)",
    )
    return parser.parse_args(argv)


def run_cli(args: argparse.Namespace) -> int:
    """0: every image classified; 1: an error (per image, or the request's), printed on stderr."""
    with Client(
        args.url, timeout=args.timeout, retries=args.retries, api_key=args.api_key
    ) as client:
        results = client.classify_many(
            args.images, attributes=args.attributes, threshold=args.threshold, top_k=args.top_k
        )
        failed = [(path, r) for path, r in zip(args.images, results) if isinstance(r, ApiError)]
        if args.json:
            print(
                json.dumps({"results": [_json_entry(p, r) for p, r in zip(args.images, results)]})
            )
        else:
            print(_tables(client, args, results))
    for path, error in failed:
        print(f"error: {path}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _json_entry(path: Path, result: BatchResult) -> dict[str, Any]:
    return {"image": str(path), **result.to_json()}


def _tables(client: Client, args: argparse.Namespace, results: list[BatchResult]) -> str:
    model_thresholds: dict[str, float] | None = None  # from /metadata, asked once if needed
    blocks = []
    for path, result in zip(args.images, results):
        if isinstance(result, ApiError):
            blocks.append(f"{path}: {result.code}: {result.detail}")
            continue
        # The answer names only the present labels' thresholds; the others: the number asked
        # for, else the model's.
        if isinstance(args.threshold, float):
            fallback = dict.fromkeys(result.probabilities, args.threshold)
        else:
            if model_thresholds is None:
                model_thresholds = _model_thresholds(client)
            fallback = model_thresholds
        header = f"{path}  ({result.model.name} {result.model.version})"
        blocks.append(header + "\n" + table(result, fallback))
    return "\n\n".join(blocks)


def _model_thresholds(client: Client) -> dict[str, float]:
    try:
        return metadata_thresholds(client.metadata())
    except ClientError:
        return {}  # the table shows "-": the classification itself stands


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_cli(args)
    except (ClientError, OSError) as e:  # OSError: an image file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
