"""The generated OpenAPI document against the service's real answers: every route's success and
every error code a client can cause, validated against the schema the document gives for that
route, status and media type (undeclared keys fail: the document cannot drift from the code)."""

from __future__ import annotations

import copy

import httpx
import pytest
from jsonschema import Draft202012Validator

from serve_app.api.schema import ENDPOINTS, ERROR_CODES
from tests import images

pytestmark = pytest.mark.serve

JPEG = images.solid(images.RED)


def as_json_schema(node):
    """OpenAPI 3.0's dialect -> JSON Schema 2020-12 for jsonschema, strict: an object schema
    that does not say otherwise allows no undeclared keys."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items()}
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(inclusive)
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def check(doc: dict, method: str, route: str, response: httpx.Response) -> None:
    """``response`` is one the document declares for ``method route``: its status, its media
    type, and (JSON) a body valid against the declared schema."""
    operations = doc["paths"][route]  # a 405 is declared by the route's other method
    operation = operations.get(method.lower()) or next(iter(operations.values()))
    declared = operation["responses"].get(str(response.status_code))
    assert declared, f"{method} {route}: {response.status_code} not in the document"
    media = response.headers["content-type"].split(";")[0]
    content = declared["content"]
    assert media in content, f"{method} {route} {response.status_code}: {media} not in {content}"
    if media == "application/json":
        schema = {**content[media]["schema"], "components": as_json_schema(doc["components"])}
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft202012Validator(as_json_schema(schema)).iter_errors(response.json())
        ]
        assert errors == [], (method, route, response.status_code, errors[:5])
    for header in declared.get("headers", {}):
        assert header.lower() in response.headers, (route, response.status_code, header)


def astronaut_jpeg() -> bytes:
    from tests.test_faces import astronaut, jpeg

    return jpeg(astronaut())


def multipart(*fields: tuple[str, bytes]) -> dict:
    return {"files": [(name, ("a.jpg", data, "image/jpeg")) for name, data in fields]}


def raw(data: bytes, content_type: str = "image/jpeg") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


# (method, route, url, request kwargs, expected status, expected error code or None)
CASES = [
    ("GET", "/healthz", "/healthz", {}, 200, None),
    ("GET", "/readyz", "/readyz", {}, 200, None),
    ("GET", "/metadata", "/metadata", {}, 200, None),
    ("GET", "/openapi.json", "/openapi.json", {}, 200, None),
    ("GET", "/", "/", {}, 200, None),
    ("GET", "/docs", "/docs", {}, 200, None),
    ("GET", "/docs/static/{asset}", "/docs/static/swagger-ui-bundle.js", {}, 200, None),
    ("GET", "/docs/static/{asset}", "/docs/static/secrets.txt", {}, 404, "not_found"),
    ("POST", "/classify", "/classify", multipart(("image", JPEG)), 200, None),
    ("POST", "/classify", "/classify", raw(JPEG), 200, None),
    (
        "POST",
        "/classify",
        "/classify?attributes=Smiling,Eyeglasses&threshold=0.3&top_k=1",
        raw(JPEG),
        200,
        None,
    ),
    ("POST", "/classify", "/classify", raw(b""), 400, "empty_image"),
    ("POST", "/classify", "/classify", raw(b"\x00junk" * 50), 400, "undecodable_image"),
    (
        "POST",
        "/classify",
        "/classify",
        raw(images.solid(size=(2100, 2100), fmt="PNG"), "image/png"),
        400,
        "image_too_large",
    ),
    (
        "POST",
        "/classify",
        "/classify",
        raw(b"--x\r\nnonsense", "multipart/form-data"),
        400,
        "bad_multipart",
    ),
    ("POST", "/classify", "/classify", raw(b"\xff" * (1024 * 1024 + 10)), 413, "payload_too_large"),
    (
        "POST",
        "/classify",
        "/classify",
        multipart(("image", JPEG), ("image", JPEG)),
        413,
        "too_many_images",
    ),
    (
        "POST",
        "/classify",
        "/classify",
        multipart(*[("other", b"x")] * 10),
        413,
        "too_many_parts",
    ),
    ("POST", "/classify", "/classify", raw(b"abc", "text/plain"), 415, "unsupported_media_type"),
    ("POST", "/classify", "/classify", multipart(("photo", JPEG)), 422, "missing_image"),
    ("POST", "/classify", "/classify?attributes=Smilling", raw(JPEG), 422, "unknown_attribute"),
    ("POST", "/classify", "/classify?threshold=2", raw(JPEG), 422, "invalid_query"),
    ("POST", "/classify", "/classify?top_k=0", raw(JPEG), 422, "invalid_query"),
    ("POST", "/classify", "/classify?treshold=0.3", raw(JPEG), 422, "invalid_query"),
    (
        "POST",
        "/classify/batch",
        "/classify/batch?top_k=3",
        multipart(("image", JPEG), ("image", b"not an image")),
        200,
        None,
    ),
    (
        "POST",
        "/classify/batch",
        "/classify/batch?attributes=Nope",
        multipart(("image", JPEG)),
        422,
        "unknown_attribute",
    ),
    ("POST", "/explain", "/explain?grid=2", raw(JPEG), 200, None),
    ("POST", "/explain", "/explain?grid=2&format=png", raw(JPEG), 200, None),
    ("POST", "/explain", "/explain?grid=99", raw(JPEG), 422, "invalid_query"),
    ("POST", "/explain", "/explain?attribute=Nope&grid=2", raw(JPEG), 422, "unknown_attribute"),
    ("GET", "/rollout", "/rollout", {}, 200, None),
    ("POST", "/faces", "/faces", raw(JPEG), 200, None),  # no face: 200 and an empty list
    ("POST", "/faces", "/faces?top_k=2&max_faces=1", raw(astronaut_jpeg()), 200, None),
    ("POST", "/faces", "/faces", raw(b""), 400, "empty_image"),
    ("POST", "/faces", "/faces?min_face_px=5", raw(JPEG), 422, "invalid_query"),
    ("GET", "/classify", "/classify", {}, 405, "method_not_allowed"),
    ("POST", "/healthz", "/healthz", {}, 405, "method_not_allowed"),
]


def test_every_route_and_error_matches_the_document(served):
    untried = {(e.method, e.path) for e in ENDPOINTS} - {(m, r) for m, r, *_ in CASES}
    assert untried == set(), f"add a case for each route: {untried}"
    doc = served.http.get("/openapi.json").json()
    seen: set[tuple[int, str]] = set()
    for method, route, url, kwargs, status, code in CASES:
        response = served.http.request(method, url, **kwargs)
        assert response.status_code == status, (method, url, response.text[:300])
        if code:
            assert response.json()["error"] == code, (url, response.text)
            seen.add((status, code))
        check(doc, method, route, response)
    unknown = served.http.get("/no/such/route")
    assert unknown.json()["error"] == "not_found"
    seen.add((404, "not_found"))
    # Reached elsewhere: 503s in test_serving_http's overload test (validated there too); 401
    # and 429 in test_auth.py, which validates them against the keyed app's document (this app
    # has no keys); 500 is a bug, nothing a client can cause.
    elsewhere = {(503, "overloaded"), (503, "model_unavailable"), (500, "internal_error")}
    elsewhere |= {(401, "unauthorized"), (429, "rate_limited")}
    every = {(s, c) for s, codes in ERROR_CODES.items() for c in codes}
    assert every - elsewhere - seen == set()


def test_document_lists_every_route_and_status_the_code_has():
    """Generated from api.ENDPOINTS: each route, its query parameters and its error statuses."""
    from serve_app.api.openapi import openapi_spec
    from serve_app.config import AppArgs

    doc = openapi_spec(AppArgs())
    assert doc["openapi"] == "3.0.3"  # what the bundled Swagger UI 4 renders
    assert {(e.method.lower(), e.path) for e in ENDPOINTS} == {
        (m, p) for p, ops in doc["paths"].items() for m in ops
    }
    for endpoint in ENDPOINTS:
        op = doc["paths"][endpoint.path][endpoint.method.lower()]
        assert {"404", "405", "500"} <= set(op["responses"])
        for status in endpoint.errors:
            enum = op["responses"][str(status)]["content"]["application/json"]["schema"]
            assert set(enum["properties"]["error"]["enum"]) == set(ERROR_CODES[status])
    classify = doc["paths"]["/classify"]["post"]
    assert [p["name"] for p in classify["parameters"]] == ["attributes", "threshold", "top_k"]
    body = classify["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert body["image/*"]["schema"]["format"] == "binary"
    assert "Retry-After" in classify["responses"]["503"]["headers"]


def test_explain_accepts_exactly_the_documented_parameters():
    """ExplainQuery (serve_app/ingress/explain.py) parses /explain's query; the document takes its
    parameters from api.ExplainParams: both name the same ones."""
    from starlette.datastructures import QueryParams

    from serve_app.api.schema import ExplainParams
    from serve_app.common.errors import ApiError
    from serve_app.ingress.explain import ExplainQuery

    valid = {"attribute": "Smiling", "format": "png", "grid": "4", "opacity": "0.5"}
    assert set(ExplainParams.model_fields) == set(valid)
    for name, value in valid.items():
        ExplainQuery.parse(QueryParams({name: value}), 8)
    with pytest.raises(ApiError):
        ExplainQuery.parse(QueryParams({"undocumented": "1"}), 8)


def test_as_json_schema_is_strict():
    """The check above can fail: an undeclared key or a null where none is allowed."""
    schema = as_json_schema(
        {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}
    )
    validator = Draft202012Validator(copy.deepcopy(schema))
    assert validator.is_valid({"a": None})
    assert not validator.is_valid({"a": "x", "b": 1})
    assert not Draft202012Validator(as_json_schema({"type": "string"})).is_valid(None)
