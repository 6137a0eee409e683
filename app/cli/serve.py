"""``colqwen serve`` (the REST API, with a worker in-process) and ``colqwen worker`` (a
worker alone)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Annotated

import typer

from app.cli.base import app, console, settings_of, user_errors


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

    from app import logs
    from app.main import create_app

    settings = settings_of(ctx)
    logs.configure(log_level)
    os.umask(0o077)  # uploads, the job table and the store: readable by this user only
    with user_errors():
        uvicorn.run(
            create_app(settings, run_worker=worker),
            host=host,
            port=port,
            log_level=log_level,
            log_config=None,  # ours (app.logs): request ids on every line
            access_log=False,  # ours too: quiet for polls, with the request id
        )


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run an ingestion worker alone: it takes jobs that `serve --no-worker` accepted."""
    from app import logs
    from indexer.wiring import document_service, job_queue
    from indexer.worker import Worker
    from retrieval.encoder_process import ingest_encoder
    from retrieval.store import PageStore

    settings = settings_of(ctx)
    logs.configure(log_level)
    os.umask(0o077)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with user_errors():
        store = PageStore.from_settings(settings)
        try:
            with ingest_encoder(settings, on_status=console.print) as encoder:
                devices = ", ".join(r.device for r in encoder.replicas)
                console.print(f"worker ready: {settings.model} on {devices}, store {store.kind}")
                documents = document_service(settings, store, job_queue(settings))
                documents.recover(sweep_uploads=False)  # the API and other workers may be busy
                Worker(settings, encoder, documents).run_forever(stop)
        finally:
            store.close()
