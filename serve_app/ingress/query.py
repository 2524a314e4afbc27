"""Query strings -> the typed queries of serve_app/api/schema.py, or a 422 naming the parameter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from serve_app.common.errors import ApiError


def parse_query(model: type[BaseModel], params: Any) -> Any:
    """Starlette QueryParams -> ``model``, or ApiError 422 invalid_query naming the parameter."""
    try:
        return model.model_validate(dict(params.items()))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'][:1])) or 'query'}: {err['msg']}" for err in e.errors()
        )
        raise ApiError(422, "invalid_query", problems) from e
