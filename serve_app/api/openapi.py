"""The OpenAPI document, generated from serve_app/api/schema.py's routes and pydantic models; served at
GET /openapi.json and rendered by the Swagger UI at /docs.

OpenAPI 3.0.3, not 3.1: the Swagger UI the project ships (swagger-ui-bundle, Swagger UI 4.15)
renders 3.0 only, so pydantic's JSON Schema 2020-12 is written the 3.0 way (``X | None`` ->
``nullable``, ``const`` -> a one-value ``enum``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve_app.api.schema import ENDPOINTS, ERROR_CODES, Endpoint, ErrorBody
from serve_app.config import AppArgs

REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
# With args.api_keys_file: either header carries the key (Swagger UI's Authorize takes either).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def openapi_spec(args: AppArgs) -> dict[str, Any]:
    models = {e.response for e in ENDPOINTS if e.response} | {ErrorBody}
    _, defs = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, args)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Face attributes",
            "version": "1",
            "description": "Classifies the 40 CelebA face attributes of a photo (JPEG, PNG, "
            f"WebP, BMP, GIF; at most {args.max_body_mb:g} MB). Every error is JSON "
            '{"error": code, "detail": text}; the codes of each status are listed with it. '
            "See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": to_openapi30(defs.get("$defs", {})),
            **({"securitySchemes": SECURITY_SCHEMES} if args.api_keys_file else {}),
        },
    }


def _operation(endpoint: Endpoint, args: AppArgs) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.strip("_").removesuffix("_endpoint"),
        "summary": endpoint.summary,
        "responses": _responses(endpoint, keyed=bool(args.api_keys_file) and endpoint.keyed),
    }
    if args.api_keys_file and endpoint.keyed:
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
    if endpoint.description:
        operation["description"] = endpoint.description
    parameters = _query_parameters(endpoint.query, args) if endpoint.query else []
    if "{" in endpoint.path:
        name = endpoint.path.split("{")[1].rstrip("}")
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body:
        operation["requestBody"] = _image_body(endpoint.body, args)
    return operation


def _responses(endpoint: Endpoint, keyed: bool = False) -> dict[str, Any]:
    if endpoint.response is not None:
        content = {
            "application/json": {"schema": {"$ref": REF.format(model=endpoint.response.__name__)}}
        }
    else:
        kind = "object" if endpoint.media_type == "application/json" else "string"
        content = {endpoint.media_type: {"schema": {"type": kind}}}
    for media, when in endpoint.extra_media.items():
        content[media] = {"schema": {**BINARY, "description": when}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in sorted(set(endpoint.errors) | {404, 405, 500} | ({401, 429} if keyed else set())):
        responses[str(status)] = _error_response(status)
    return responses


def _error_response(status: int) -> dict[str, Any]:
    codes = ERROR_CODES[status]
    schema = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "enum": sorted(codes)},
            "detail": {"type": "string"},
        },
        "required": ["error", "detail"],
    }
    response: dict[str, Any] = {
        "description": "; ".join(f"`{code}`: {text}" for code, text in codes.items()),
        "content": {"application/json": {"schema": schema}},
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
        }
    if status == 405:
        response["headers"] = {
            "Allow": {"description": "the route's method", "schema": {"type": "string"}}
        }
    return response


def _query_parameters(model: type[BaseModel], args: AppArgs) -> list[dict[str, Any]]:
    schema = to_openapi30(model.model_json_schema())
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        if name == "grid":
            prop["default"] = args.explain_grid
        parameter = {"name": name, "in": "query", "required": False, "schema": prop}
        if description:
            parameter["description"] = description
        if prop.get("type") == "array":
            parameter.update(style="form", explode=True)
        parameters.append(parameter)
    return parameters


def _image_body(kind: str, args: AppArgs) -> dict[str, Any]:
    if kind == "images":
        field = {"type": "array", "items": BINARY, "maxItems": args.max_batch_images}
        return {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": field},
                        "required": ["image"],
                    }
                }
            },
        }
    return {
        "required": True,
        "description": "a multipart 'image' field, or the raw image with Content-Type image/*",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": BINARY}, "required": ["image"]}
            },
            "image/*": {"schema": BINARY},
        },
    }


def to_openapi30(schema: Any) -> Any:
    """JSON Schema 2020-12 as pydantic writes it -> OpenAPI 3.0's dialect: ``anyOf [X, null]``
    -> X with ``nullable: true``, ``const`` -> ``enum``, a numeric
    ``exclusiveMinimum`` -> ``minimum`` + ``exclusiveMinimum: true``; other keys kept, recursively."""
    if isinstance(schema, list):
        return [to_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_openapi30(v) for k, v in schema.items()}
    variants = out.get("anyOf")
    if variants and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and out["examples"]:
        out["example"] = out.pop("examples")[0]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[inclusive], out[bound] = out[bound], True
    return out
