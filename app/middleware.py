"""The outermost layer of every request: its id, its access-log line, its metrics, the answer
to ``OPTIONS`` and ``HEAD``, and a JSON 500 (logged with the id, never shown as a traceback)
for anything that escaped the error handlers. A client that hangs up before its request is read
is counted as 499 (nginx's code for it), in one INFO line: its doing, not the server's. Pure
ASGI, so it sees exceptions and streams as they are."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.logs import request_id

log = logging.getLogger("app.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED = 499  # the client went away before its request was read
# Polled routes: logged at DEBUG, so INFO shows what happened rather than who asked.
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics", "/v1/jobs/{job_id}"}


def allowed_methods(app, scope: Scope) -> list[str]:
    """Every method the API serves at this path (GET implies HEAD), plus OPTIONS; [] when no
    route has this path. Read from the OpenAPI paths: one public map of routes to methods."""
    table = getattr(app.state, "route_methods", None)
    if table is None:
        table = [
            (compile_path(path)[0], {m.upper() for m in operations})
            for path, operations in app.openapi()["paths"].items()
        ]
        app.state.route_methods = table
    methods = set().union(*(m for regex, m in table if regex.match(scope["path"])))
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"}) if methods else []


def _serves_get(app, scope: Scope) -> bool:
    """Whether a route of ``app`` (the API's, the UI's, a mount) answers GET at this path."""
    probe = {**scope, "method": "GET"}
    return any(route.matches(probe)[0] == Match.FULL for route in app.router.routes)


def _headers_only(send: Send) -> Send:
    """``send`` for a HEAD request answered as its GET: the same status and headers (its
    Content-Length included), no body."""

    ended = False

    async def send_head(message: Message) -> None:
        nonlocal ended
        if message["type"] == "http.response.body":
            if ended:
                return  # the rest of a streamed body
            ended = True
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return send_head


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            if scope["method"] == "OPTIONS" and "access-control-request-method" not in headers:
                await self._options(scope, receive, send_with_id)
            elif scope["method"] == "HEAD" and _serves_get(scope["app"], scope):
                await self.app({**scope, "method": "GET"}, receive, _headers_only(send_with_id))
            else:
                await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # logged once, at INFO, by _record
        except Exception:
            log.exception("%s %s failed [request %s]", scope["method"], scope["path"], rid)
            if not started:
                response = error_response(
                    500,
                    "internal",
                    f"an unexpected error; the server log has its details under request id {rid}",
                )
                await response(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - start)
            request_id.reset(token)

    async def _options(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = allowed_methods(scope["app"], scope)
        if not allowed:
            await self.app(scope, receive, send)  # the usual JSON 404
            return
        await Response(status_code=204, headers={"Allow": ", ".join(allowed)})(scope, receive, send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        level = logging.INFO
        if route in QUIET_ROUTES and (status < 500 or route == "/readyz"):
            level = logging.DEBUG  # a poll; /readyz answers 503 while the model loads
        elif status >= 500 and status != CLIENT_CLOSED:
            level = logging.ERROR
        log.log(
            level, "%s %s -> %d in %.1f ms", scope["method"], scope["path"], status, seconds * 1e3
        )
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is not None:
            metrics = services.metrics
            metrics.requests.labels(scope["method"], route, str(status)).inc()
            metrics.latency.labels(scope["method"], route).observe(seconds)
