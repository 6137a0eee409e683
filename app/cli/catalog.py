"""``colqwen docs`` and ``colqwen collections``: what is stored, and removing it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from app.cli.base import (
    CollectionOpt,
    JsonOpt,
    app,
    console,
    open_store,
    print_json,
    settings_of,
    user_errors,
)
from retrieval.words import count

docs_app = typer.Typer(help="List, show and delete documents.", no_args_is_help=True)
collections_app = typer.Typer(
    help="Create, list, upgrade and drop collections.", no_args_is_help=True
)
app.add_typer(docs_app, name="docs")
app.add_typer(collections_app, name="collections")


@docs_app.command("list")
def docs_list(
    ctx: typer.Context, collection: CollectionOpt = None, as_json: JsonOpt = False
) -> None:
    """Every document: id, name, pages, status."""
    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json), open_store(settings) as store:
        docs = store.documents(settings.collection)
    if as_json:
        print_json([_public(d) for d in docs])
        return
    table = Table("doc id", "name", "pages", "status", "created")
    for d in docs:
        status = d.status if d.status != "failed" else f"[red]failed[/]: {d.error}"
        table.add_row(d.doc_id[:12], d.name, str(d.page_count), status, d.created_at)
    console.print(table)
    console.print(count(len(docs), "document"))


@docs_app.command("show")
def docs_show(
    ctx: typer.Context,
    doc_id: Annotated[str, typer.Argument(help="Document id (or a unique prefix of it).")],
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One document's record and stored pages."""
    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json), open_store(settings) as store:
        doc = store.find_document(settings.collection, doc_id)
        stored = store.stored_page_numbers(settings.collection, doc.doc_id)
    data = {**_public(doc), "pages_stored": len(stored)}
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        console.print(f"[bold]{key}[/]: {value}")


@docs_app.command("delete")
def docs_delete(
    ctx: typer.Context,
    doc_id: Annotated[str, typer.Argument(help="Document id (or a unique prefix of it).")],
    collection: CollectionOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a document: every page, its catalog record and its uploaded original."""
    from indexer.wiring import open_documents

    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json), open_store(settings) as store:
        doc = store.find_document(settings.collection, doc_id)
        if not yes:
            typer.confirm(
                f"Delete {doc.name} ({count(doc.page_count, 'page')}) "
                f"from '{settings.collection}'?",
                abort=True,
            )
        with open_documents(settings, store) as documents:
            documents.delete(settings.collection, doc.doc_id)
    if as_json:
        print_json({"deleted": doc.doc_id})
    else:
        console.print(f"deleted {doc.name} ({doc.doc_id})")


def _public(doc) -> dict:
    """A document record as shown: without its sealed password."""
    data = asdict(doc)
    data.pop("password_sealed", None)
    return data


@collections_app.command("list")
def collections_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Collections with their schema and size."""
    settings = settings_of(ctx)
    with user_errors(as_json), open_store(settings) as store:
        rows = store.overview()
    if as_json:
        print_json([{**asdict(c), "pages": n, "documents": d} for c, d, n in rows])
        return
    table = Table(
        "name",
        "documents",
        "pages",
        "first stage",
        "pooling",
        "storage",
        "model",
        "max visual tokens",
    )
    for c, d, n in rows:
        pooling = ",".join(c.pooling) or "none"
        stage = c.first_stage if c.first_stage == "fde" else "rows [dim](upgrade it)[/]"
        table.add_row(
            c.name,
            str(d),
            str(n),
            stage,
            pooling,
            c.original_dtype,
            c.model,
            str(c.max_visual_tokens),
        )
    console.print(table)


@collections_app.command("create")
def collections_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Collection name.")],
    pooling: Annotated[
        str | None,
        typer.Option(help="buckets, rows, cols, a comma-separated mix, or none [COLQWEN_POOLING]."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Storage of the full multivectors: float16, turbo16, turbo8 or float32 "
            "[COLQWEN_ORIGINAL_DTYPE]."
        ),
    ] = None,
    index: Annotated[
        list[str] | None,
        typer.Option(
            help="Filterable metadata key=kind (keyword, integer, float, bool, datetime)."
        ),
    ] = None,
) -> None:
    """Create a collection, declaring which metadata keys are filterable (indexed)."""
    from retrieval.errors import ConfigurationError

    settings = settings_of(ctx, pooling=pooling, original_dtype=dtype)
    with user_errors(), open_store(settings) as store:
        filterable = {}
        for item in index or []:
            key, sep, kind = item.partition("=")
            if not sep:
                raise ConfigurationError(f"bad --index '{item}': use key=kind, e.g. year=integer")
            filterable[key] = kind
        info = store.create_collection_for(name, settings, filterable=filterable)
    pooled = ",".join(info.pooling) or "none"
    console.print(f"created collection {info.name} (pooling: {pooled}, {settings.original_dtype})")


@collections_app.command("drop")
def collections_drop(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Collection to drop, with all its pages.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop a collection and everything in it."""
    settings = settings_of(ctx)
    with user_errors(), open_store(settings) as store:
        if not yes and store.has_collection(name):  # else no question: the drop says why
            typer.confirm(f"Drop collection '{name}' and all its pages?", abort=True)
        store.drop_collection(name)
    console.print(f"dropped collection {name}")


@collections_app.command("upgrade")
def collections_upgrade(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Collection made by an earlier version.")],
) -> None:
    """Give a collection made before FDEs the fast first stage, one made with SimHash buckets
    the clustered middle stage (a third of the pages reranked, the same recall), and one made
    before pages kept their text its text and BM25 vectors (modes text and hybrid).

    No model and no GPU: each page's FDE and pooled vectors are computed from the token
    vectors already stored, and its text is read again from the kept original. Searches keep
    working meanwhile; stop ingesting into the collection until it is done. Resumable: run it
    again after an interruption.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from indexer.wiring import open_documents

    settings = settings_of(ctx)
    with (
        user_errors(),
        open_store(settings) as store,
        open_documents(settings, store) as documents,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar,
    ):
        tasks = []  # the bar's task, added with the first figures: none if nothing to upgrade

        def progress(done: int, total: int) -> None:
            if not tasks:
                tasks.append(bar.add_task(f"upgrading {name}", total=total))
            bar.update(tasks[0], completed=done, total=total)

        upgraded = documents.upgrade_collection(name, progress=progress)
    if upgraded is None:
        console.print(f"collection {name} already has the current schema")
        return
    console.print(f"upgraded collection {name}: FDE first stage, clustered middle stage, page text")
