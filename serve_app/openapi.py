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
        422: "multipart body without an 'image' field; on /explain also an unknown attribute "
        "(the detail lists the valid names) or a bad query parameter",
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
            "/explain": {
                "post": {
                    "summary": "Per-attribute explanation maps (occlusion sensitivity) of one "
                    "image; the same image inputs as /classify",
                    "description": "map[i][j] = how much the attribute's probability falls when "
                    "the patch centred on cell (i, j) of a grid x grid split of the image is "
                    "hidden (2x2 cells, set to the training mean); row 0 at the top. One pass "
                    "explains every attribute, so asking for more costs nothing extra. "
                    "format=png returns the photo with the map of each attribute laid over it, "
                    "side by side. See docs/explain.md.",
                    "parameters": [
                        {
                            "name": "attribute",
                            "in": "query",
                            "required": False,
                            "description": "repeatable; default: the most probable attributes at "
                            f"or above the threshold, at most {args.explain_max_attributes} "
                            "(the most probable one when none is)",
                            "schema": {"type": "array", "items": {"type": "string"}},
                            "style": "form",
                            "explode": True,
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "enum": ["json", "png"],
                                "default": "json",
                            },
                        },
                        {
                            "name": "grid",
                            "in": "query",
                            "required": False,
                            "description": "cells per side of the map; cost grows with its square",
                            "schema": {
                                "type": "integer",
                                "minimum": 2,
                                "maximum": 16,
                                "default": args.explain_grid,
                            },
                        },
                        {
                            "name": "opacity",
                            "in": "query",
                            "required": False,
                            "description": "format=png: opacity of the hottest cells",
                            "schema": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 1,
                                "default": 0.6,
                            },
                        },
                    ],
                    "requestBody": image_body,
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Explanations"}
                                },
                                "image/png": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
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
                "Explanations": {
                    "type": "object",
                    "properties": {
                        "explanations": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "attribute": {"type": "string"},
                                    "probability": {"type": "number"},
                                    "map": {
                                        "type": "array",
                                        "description": "grid rows, top first, of grid "
                                        "non-negative numbers each (probability drops)",
                                        "items": {"type": "array", "items": {"type": "number"}},
                                    },
                                },
                            },
                        },
                        "model": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                            },
                        },
                        "method": {"type": "string", "enum": ["occlusion"]},
                        "grid": {"type": "array", "items": {"type": "integer"}},
                    },
                    "required": ["explanations", "model", "method", "grid"],
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
