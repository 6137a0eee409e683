"""Logging of the service: one line per event, each request's id on every line it causes.

``request_id`` is a context variable set by ``app.middleware``; a filter copies it onto every
record, so a client's ``X-Request-ID`` (or the one we made up and returned) finds its lines.
Third-party libraries that log on the root logger at import (colpali-engine's "FastPlaid is
not installed") are silenced; their warnings on their own loggers still show.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return not (record.name == "root" and "site-packages" in record.pathname)


def configure(level: str = "info") -> None:
    """Log to stderr at ``level``; uvicorn's own access log is replaced by ours."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
