"""Our exceptions -> HTTP status and a JSON body, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from retrieval.errors import (
    ColqwenError,
    ConfigurationError,
    Conflict,
    InvalidDocument,
    InvalidInput,
    ModelLoadError,
    NotFound,
    PageTooLarge,
    StoreError,
    UnsupportedFormat,
)

log = logging.getLogger(__name__)


class Overloaded(ColqwenError):
    """Too many queries are waiting for the model."""


class PayloadTooLarge(InvalidInput):
    """The upload is over the size limit."""


class Unauthorized(ColqwenError):
    """Missing or wrong API key."""


_STATUS: list[tuple[type[ColqwenError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (PageTooLarge, 413, "page_too_large"),
    (UnsupportedFormat, 415, "unsupported_media_type"),
    (InvalidDocument, 422, "invalid_document"),
    (InvalidInput, 422, "invalid_input"),
    (ConfigurationError, 400, "bad_request"),
    (Overloaded, 429, "overloaded"),
    (ModelLoadError, 503, "model_unavailable"),
    (StoreError, 503, "store_unavailable"),
]


def status_of(exc: ColqwenError) -> tuple[int, str]:
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            return status, name
    return 400, "bad_request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ColqwenError)
    async def _ours(request: Request, exc: ColqwenError) -> JSONResponse:
        status, name = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            {"error": name, "detail": str(exc)}, status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": "invalid_input", "detail": problems}, status_code=422)
