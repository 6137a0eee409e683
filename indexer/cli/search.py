"""``colqwen search``: query a collection from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from indexer.cli.base import (
    CollectionOpt,
    JsonOpt,
    app,
    console,
    open_store,
    print_json,
    settings_of,
    user_errors,
)
from retrieval.errors import InvalidInput


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What you are looking for, in plain language.")],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, max=1000, help="Pages to return.")
    ] = 10,
    mode: Annotated[str, typer.Option(help="two_stage, exact or pooled.")] = "two_stage",
    prefetch: Annotated[
        int | None,
        typer.Option(help="Candidates the full token vectors rerank [COLQWEN_PREFETCH]."),
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
    from retrieval.encoder import Encoder
    from retrieval.search import Searcher
    from retrieval.store import parse_filter

    settings = settings_of(ctx, collection=collection)
    with user_errors():
        try:
            spec = json.loads(filter_json) if filter_json else None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--filter is not valid JSON: {exc}") from None
        where = parse_filter(spec)
        with open_store(settings) as store:
            store.collection(settings.collection)  # fail fast, before loading the model
            encoder = Encoder.from_settings(settings)
            searcher = Searcher(encoder, store, collection=settings.collection)
            hits = searcher.search(query, top_k=top_k, filter=where, mode=mode, prefetch=prefetch)
    if as_json:
        print_json({"query": query, "mode": mode, "hits": [asdict(h) for h in hits]})
        return
    table = Table("#", "score", "document", "page", "doc id")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.source, str(hit.page), hit.doc_id[:12])
    console.print(table)
