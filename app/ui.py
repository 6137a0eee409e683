"""The web UI and the API's interactive docs, served by the app itself: no CDN, no separate
server, no build step. Every asset comes from this process (the UI's from ``app/static``,
Swagger UI's from the ``fastapi-offline`` package), so both work without internet, and the
pages are sent with a Content-Security-Policy that allows scripts from this origin only."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
SWAGGER = Path(str(files("fastapi_offline") / "static"))

# Scripts, styles, images and requests from this origin only; images also from blob: URLs (the
# UI fetches them with the API key). Swagger UI sets inline style attributes: styles allow them
# on the docs page alone.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_DOCS_POLICY = _POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>colqwen-search API</title>
<link rel="stylesheet" href="/ui/swagger/swagger-ui.css">
<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml"></head>
<body><div id="swagger-ui"></div>
<script src="/ui/swagger/swagger-ui-bundle.js"></script>
<script src="/ui/docs.js"></script></body></html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for it whatever the page says: no 404 in their console."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/docs")
def docs() -> HTMLResponse:
    return HTMLResponse(_DOCS_HTML, headers={"Content-Security-Policy": _DOCS_POLICY})


def install(app: FastAPI) -> None:
    """Mount the UI at ``/`` and its assets under ``/ui``, Swagger UI's included."""
    app.include_router(router)
    app.mount("/ui/swagger", StaticFiles(directory=SWAGGER), name="swagger-assets")
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui-assets")


class SecurityHeaders:
    """Adds the security headers to every answer, and the strict CSP to those without one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = {**_HEADERS, "Content-Security-Policy": _POLICY}
                for name, value in extra.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
