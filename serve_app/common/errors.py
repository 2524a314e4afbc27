"""Every client-visible failure is an ApiError rendered as {"error": code, "detail": message}."""

from __future__ import annotations

from starlette.responses import JSONResponse

RETRY_AFTER_S = 1


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(self.as_dict(), status_code=self.status, headers=headers)


def overloaded(detail: str = "the model is at capacity; retry shortly") -> ApiError:
    return ApiError(503, "overloaded", detail, retry_after=RETRY_AFTER_S)


def model_unavailable(detail: str) -> ApiError:
    return ApiError(503, "model_unavailable", detail, retry_after=RETRY_AFTER_S)
