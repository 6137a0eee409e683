"""``colqwen search``: query a collection from the command line.

Everything a user can get wrong (an empty query, a bad mode or filter, a missing collection) is
checked before the model loads, which takes seconds; the model defaults to the one the
collection was built with.
"""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from indexer.cli.base import (
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


class Mode(StrEnum):
    two_stage = "two_stage"
    exact = "exact"
    pooled = "pooled"


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What you are looking for, in plain language.")],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, max=1000, help="Pages to return.")
    ] = 10,
    mode: Annotated[
        Mode,
        typer.Option(
            help="two_stage: fast candidates reranked by every token vector; exact: every page "
            "scored (slow, the oracle); pooled: the fast first stage alone."
        ),
    ] = Mode.two_stage,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=1, max=10000, help="Candidates the full token vectors rerank [COLQWEN_PREFETCH]."
        ),
    ] = None,
    filter_json: Annotated[
        str | None,
        typer.Option(
            "--filter", help='JSON filter, e.g. \'{"metadata": {"year": {"gte": 2020}}}\'.'
        ),
    ] = None,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection and print the best-matching pages."""
    from retrieval.store import parse_filter_json

    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json):
        if not query.strip():
            raise InvalidInput("the query is empty: say what you are looking for")
        where = parse_filter_json(filter_json, what="--filter")
        with open_store(settings) as store:
            info = store.collection(settings.collection)  # before the model loads
            if "model" not in settings.model_fields_set and info.model != settings.model:
                settings = settings.model_copy(update={"model": info.model})
            from retrieval.encoder import Encoder
            from retrieval.search import Searcher

            status = err_console.status(f"loading {settings.model}")
            with status if not as_json else _quiet():
                encoder = Encoder.from_settings(settings)
            searcher = Searcher(encoder, store, collection=settings.collection)
            hits = searcher.search(
                query, top_k=top_k, filter=where, mode=mode.value, prefetch=prefetch
            )
    if as_json:
        print_json({"query": query, "mode": mode.value, "hits": [asdict(h) for h in hits]})
        return
    table = Table("#", "score", "document", "page", "doc id")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.source, str(hit.page), hit.doc_id[:12])
    console.print(table)
    if not hits:
        console.print("no page matched" + (" the filter" if where else ""))


def _quiet():
    from contextlib import nullcontext

    return nullcontext()
