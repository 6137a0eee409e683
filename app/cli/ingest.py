"""``colqwen ingest``: folders of PDFs into a collection, resumable, with progress."""

from __future__ import annotations

import json
from contextlib import ExitStack, closing, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from app.cli.base import (
    CollectionOpt,
    JsonOpt,
    app,
    console,
    err_console,
    open_store,
    print_json,
    settings_of,
    user_errors,
)
from retrieval.errors import InvalidInput
from retrieval.words import count


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="PDF files or directories.")],
    collection: CollectionOpt = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Descend into subdirectories.")
    ] = False,
    glob: Annotated[
        list[str] | None,
        typer.Option(
            help="File name patterns in directories, any case \\[default: *.pdf, and office "
            "files (*.docx, *.pptx, *.xlsx, *.odt, ...) where LibreOffice is installed]."
        ),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Take only shard I of N (I/N), for N machines.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Pages per forward pass [COLQWEN_BATCH_SIZE].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Render processes [COLQWEN_RENDER_WORKERS].")
    ] = None,
    password: Annotated[str | None, typer.Option(help="Password for encrypted PDFs.")] = None,
    meta: Annotated[
        list[str] | None, typer.Option(help="Metadata key=value for every document (repeatable).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a JSON report of every file here.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    server: Annotated[
        str | None,
        typer.Option(help="Send the files to a running `colqwen serve` at this URL instead."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key of the server (with --server).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Render, embed and store every page of PATHS. Re-running skips what is already stored.

    A sidecar FILE.json (or STEM.json) beside a PDF adds metadata to that document. Exit code 1
    when any file failed; each failure is listed with its reason.
    """
    from indexer.sources import (
        default_globs,
        discover,
        iter_shard,
        nothing_found_hint,
        parse_meta,
        parse_shard,
    )

    settings = settings_of(
        ctx, batch_size=batch_size, render_workers=workers, collection=collection
    )
    globs = glob or default_globs()
    with user_errors(as_json):
        shard_spec = parse_shard(shard) if shard else None
        common_meta = parse_meta(meta or [])
        found = discover(paths, globs=globs, recursive=recursive)
        if not found:
            raise InvalidInput(nothing_found_hint(paths, globs=globs, recursive=recursive))
        sources = list(iter_shard(found, shard_spec))
        for source in sources:
            source.metadata = dict(common_meta)
            source.password = password
        if server:
            result = _run_remote(server, settings, sources, api_key=api_key, quiet=quiet or as_json)
        else:
            result = _run(settings, sources, quiet=quiet or as_json)
    data = result.to_dict()
    if report:
        report.write_text(json.dumps(data, indent=2))
    if as_json:
        print_json(data)
    else:
        _print_summary(result)
    if not result.ok:
        raise typer.Exit(code=1)


def _run(settings, sources, *, quiet: bool):
    from indexer.ingest import for_run, ingest_pipeline, render_pool
    from indexer.secrets import Sealer
    from retrieval.checkpoint import identify
    from retrieval.encoder_process import ingest_encoder

    say = (lambda message: None) if quiet else err_console.print
    settings, note = for_run(settings, sources)
    if note:
        say(note)
    with open_store(settings) as store, ExitStack() as stack:
        # Refused in a second, not after minutes of loading: a model that is not the collection's.
        store.check_model(settings.collection, identify(settings.model), action="ingest into")
        # The model's processes load while this one reads the processor and starts the render
        # processes.
        loading = stack.enter_context(closing(ingest_encoder(settings, on_status=say).start()))
        renderer = stack.enter_context(render_pool(settings)).start()
        message = f"loading {settings.model}"
        if loading.compiles_first:
            message += "; compiling it before the first page (README: COLQWEN_COMPILE_HANDOVER)"
        with nullcontext() if quiet else err_console.status(message):
            encoder = stack.enter_context(loading)
        if any(s.password for s in sources):  # kept sealed, for page images of encrypted PDFs
            sealer = Sealer.from_settings(settings)
            for source in sources:
                source.password_sealed = sealer.seal(source.password)
        progress, update = _progress(quiet, len(sources))
        pipeline = ingest_pipeline(
            settings, store, settings.collection, encoder, renderer=renderer, on_progress=update
        )
        with progress:
            return pipeline.run(sources)


def _run_remote(server, settings, sources, *, api_key, quiet: bool):
    from indexer.remote import ingest_remote

    progress, update = _progress(quiet, len(sources))
    with progress:
        return ingest_remote(
            server, sources, collection=settings.collection, api_key=api_key, on_progress=update
        )


class RateColumn(ProgressColumn):
    """Items per second since the task started, e.g. '12.3/s': the same average the summary
    line reports at the end (rich's own speed is a moving window that disagrees with it)."""

    def render(self, task) -> Text:
        if not task.completed or not task.elapsed or not task.fields.get("rate", True):
            return Text("")
        return Text(f"{task.completed / task.elapsed:.1f}/s", style="progress.data.speed")


def _progress(quiet: bool, files: int):
    """A progress bar of files and pages, and the callback that moves it."""
    progress = Progress(
        TextColumn("[bold]{task.description:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )
    # Started with the run (its first report), not before: their rates then count the same
    # seconds as the summary's, not the collection's set-up too.
    files_task = progress.add_task("files", total=files, start=False)
    pages_task = progress.add_task("pages", total=None, start=False)
    index_task = progress.add_task("index", total=None, visible=False, rate=False)

    def update(state) -> None:
        waiting = {t.id for t in progress.tasks if not t.started}
        for task in waiting & {files_task, pages_task}:
            progress.start_task(task)
        progress.update(files_task, completed=state.files_done)
        progress.update(pages_task, completed=state.pages_done, total=state.pages_total or None)
        phase = getattr(state, "phase", "embedding")
        if phase == "indexing":  # minutes on a large collection: say so
            progress.update(index_task, visible=True, description="index")
        elif phase == "done":
            progress.update(index_task, total=1, completed=1)

    return progress, update


def _print_summary(result) -> None:
    failed = [d for d in result.documents if d.status == "failed"]
    if failed:
        table = Table("failed file", "reason", title="Failures", title_justify="left")
        for d in failed:
            table.add_row(d.name, d.error or "")
        console.print(table)
    stored_at = result.stage_s.get("stored_at", result.elapsed_s)
    rate = result.pages_embedded / stored_at if stored_at else 0.0
    index = result.stage_s.get("index")
    console.print(
        f"{result.count('indexed')} indexed, {result.count('skipped')} skipped (already stored), "
        f"{result.count('failed')} failed; {count(result.pages_embedded, 'page')} embedded in "
        f"{stored_at:.1f} s ({rate:.1f} pages/s)"
        + (f", search index built in {index:.1f} s" if index is not None else "")
    )
