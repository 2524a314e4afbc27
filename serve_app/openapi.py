"""OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from serve_app.config import AppArgs

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {
        400: "undecodable, empty or oversized (pixels) image, malformed multipart",
        404: "unknown route",
        413: "body over the size limit, or too many images",
        415: "unsupported content type",
        422: "multipart body without an 'image' field",
        503: "overloaded or no model ready; see Retry-After",
    }
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def openapi_spec(args: AppArgs) -> dict[str, Any]:
    image_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    batch_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": args.max_batch_images,
                        }
                    },
                    "required": ["image"],
                }
            }
        },
    }
    errors = _error_responses(400, 413, 415, 422, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Face attributes",
            "version": "1",
            "description": "Classifies the 40 CelebA face attributes of a photo "
            f"(JPEG, PNG, WebP, BMP, GIF; at most {args.max_body_mb:g} MB).",
        },
        "paths": {
            "/classify": {
                "post": {
                    "summary": "Classify one image",
                    "requestBody": image_body,
                    "responses": {
                        "200": _json_ok({"$ref": "#/components/schemas/Result"}),
                        **errors,
                    },
                }
            },
            "/classify/batch": {
                "post": {
                    "summary": "Classify several images (repeated 'image' fields), in order",
                    "requestBody": batch_body,
                    "responses": {
                        "200": _json_ok(
                            {
                                "type": "object",
                                "properties": {
                                    "results": {
                                        "type": "array",
                                        "items": {
                                            "oneOf": [
                                                {"$ref": "#/components/schemas/Result"},
                                                _ERROR,
                                            ]
                                        },
                                    }
                                },
                            }
                        ),
                        **errors,
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "The ingress is alive", "responses": {"200": _json_ok({})}}
            },
            "/readyz": {
                "get": {
                    "summary": "The model deployment answers",
                    "responses": {"200": _json_ok({}), **_error_responses(503)},
                }
            },
            "/metadata": {
                "get": {
                    "summary": "Model name, version, labels, input size, metrics",
                    "responses": {"200": _json_ok({}), **_error_responses(503)},
                }
            },
            "/": {
                "get": {
                    "summary": "Web page to try the model",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                    "required": ["error", "detail"],
                },
                "Result": {
                    "type": "object",
                    "properties": {
                        "labels": {
                            "type": "array",
                            "description": "attributes at or above the threshold, most probable first",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "label_id": {"type": "integer"},
                                    "label": {"type": "string"},
                                    "probability": {"type": "number"},
                                },
                            },
                        },
                        "probabilities": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                        },
                        "model": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                    },
                    "required": ["labels", "probabilities", "model"],
                },
            }
        },
    }


def _json_ok(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}
