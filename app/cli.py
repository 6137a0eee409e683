"""Entry point of the ``colqwen`` console script: the indexer's commands plus the service's
(``serve`` and ``worker``)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from indexer.cli import app
from indexer.cli.base import console, settings_of, user_errors

__all__ = ["app"]


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker", help="Ingest uploads in this process (embedded default)."
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the REST API (OpenAPI docs at /docs), with the ingestion worker in-process."""
    import uvicorn

    from app.main import create_app

    settings = settings_of(ctx)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with user_errors():
        uvicorn.run(
            create_app(settings, run_worker=worker), host=host, port=port, log_level=log_level
        )


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run an ingestion worker alone: it takes jobs that `serve --no-worker` accepted."""
    from indexer.worker import Worker, job_queue
    from retrieval.encoder import Encoder
    from retrieval.store import PageStore

    settings = settings_of(ctx)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with user_errors():
        store = PageStore.from_settings(settings)
        try:
            encoder = Encoder.from_settings(settings)
            console.print(f"worker ready: {settings.model} on {encoder.device}, store {store.kind}")
            Worker(settings, encoder, store, job_queue(settings)).run_forever(stop)
        finally:
            store.close()


if __name__ == "__main__":
    app()
