"""Every error -> an HTTP status and a JSON body ``{"error", "detail", "request_id"}``, in one
place: our exceptions, request validation, and the framework's own (unknown route, wrong method,
unparsable body). Anything unexpected becomes a 500 in ``app.middleware``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.logs import request_id
from retrieval.errors import (
    ColqwenError,
    ConfigurationError,
    Conflict,
    EncoderError,
    InvalidDocument,
    InvalidInput,
    ModelLoadError,
    NotFound,
    PageTooLarge,
    StoreError,
    UnsupportedFormat,
    UploadTooLarge,
)

log = logging.getLogger(__name__)


class Overloaded(ColqwenError):
    """Too many queries are waiting for the model."""


class Unauthorized(ColqwenError):
    """Missing or wrong API key."""


class NotReady(ColqwenError):
    """The model is still loading."""


class BodyTimeout(ColqwenError):
    """The request's body came too slowly, or stopped coming."""


_STATUS: list[tuple[type[ColqwenError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (BodyTimeout, 408, "request_timeout"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (UploadTooLarge, 413, "payload_too_large"),
    (PageTooLarge, 413, "page_too_large"),
    (UnsupportedFormat, 415, "unsupported_media_type"),
    (InvalidDocument, 422, "invalid_document"),
    (InvalidInput, 422, "invalid_input"),
    (ConfigurationError, 400, "bad_request"),
    (Overloaded, 429, "overloaded"),
    (NotReady, 503, "not_ready"),
    (ModelLoadError, 503, "model_unavailable"),
    (EncoderError, 500, "encoder_failed"),
    (StoreError, 503, "store_unavailable"),
]
_HTTP_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    500: "internal",
    503: "unavailable",
}
_RETRY_AFTER = {429: "1", 503: "5"}


def status_of(exc: ColqwenError) -> tuple[int, str]:
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            return status, name
    return 400, "bad_request"


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = dict(headers or {})
    if status in _RETRY_AFTER:
        headers.setdefault("Retry-After", _RETRY_AFTER[status])
    return JSONResponse(
        {"error": error, "detail": detail, "request_id": request_id.get()},
        status_code=status,
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ColqwenError)
    async def _ours(request: Request, exc: ColqwenError) -> JSONResponse:
        status, name = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, name, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(422, "invalid_input", problems or "the request is invalid")

    @app.exception_handler(HTTPException)
    async def _framework(request: Request, exc: HTTPException) -> JSONResponse:
        status = exc.status_code
        headers = dict(exc.headers or {})
        if status == 404:
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif status == 405:
            from app.middleware import allowed_methods

            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {', '.join(allowed)}"
        else:
            detail = str(exc.detail)
        return error_response(status, _HTTP_NAMES.get(status, "error"), detail, headers)
