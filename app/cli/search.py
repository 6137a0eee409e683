"""``colqwen search``: query a collection from the command line.

Everything a user can get wrong (an empty query, a bad mode or filter, a missing collection) is
checked before the model loads, which takes seconds; the model defaults to the one the
collection was built with.
"""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
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
    searcher_for,
    settings_of,
    user_errors,
)
from retrieval.types import SEARCH_MODES

Mode = StrEnum("Mode", {mode: mode for mode in SEARCH_MODES})  # the store's, one definition


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
            "scored (slow, the oracle); pooled: the fast first stage alone; text: BM25 over the "
            "pages' text; hybrid: two_stage and text fused by reciprocal rank."
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
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Also show, per hit, the regions and query tokens that matched."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection and print the best-matching pages."""
    from retrieval.store import parse_filter_json

    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json):
        where = parse_filter_json(filter_json, what="--filter")
        with open_store(settings, warm=True) as store:
            searcher = searcher_for(settings, store, quiet=as_json)
            found = searcher.search(
                query,
                top_k=top_k,
                filter=where,
                mode=mode.value,
                prefetch=prefetch,
                explain=explain,
            )
            hits = found.hits
            why = _explained(found) if explain else {}
    if as_json:
        rows = [{**asdict(h), **why.get((h.doc_id, h.page), {})} for h in hits]
        print_json({"query": query, "mode": mode.value, "hits": rows})
        return
    table = Table("#", "score", "document", "page", "doc id")
    if explain:
        table.add_column("grid (rows x cols)")
        table.add_column("best regions (row, col)")
        table.add_column("best query tokens")
    for rank, hit in enumerate(hits, 1):
        cells = [str(rank), f"{hit.score:.3f}", hit.source, str(hit.page), hit.doc_id[:12]]
        if explain:
            found = why[(hit.doc_id, hit.page)]["explanation"]
            cells += [
                "{} x {}".format(*found["grid"]),
                ", ".join(f"({r['row'] + 1}, {r['col'] + 1})" for r in found["regions"]),
                " ".join(repr(t["text"]) for t in found["tokens"]),
            ]
        table.add_row(*cells)
    console.print(table)
    if explain:
        console.print("regions count from (1, 1), the top-left token; `colqwen heatmap` draws them")
    if not hits:
        console.print("no page matched" + (" the filter" if where else ""))


def _explained(found) -> dict:
    """Each hit's grid, brightest regions and best query words (``Explanation.summary``)."""
    return {
        key: {"explanation": explanation.summary(found.words)}
        for key, explanation in found.explanations.items()
    }


@app.command()
def heatmap(
    ctx: typer.Context,
    doc_id: Annotated[str, typer.Argument(help="The document's id (or its first characters).")],
    page: Annotated[int, typer.Argument(min=1, help="Page number, from 1.")],
    query: Annotated[str, typer.Argument(help="The query whose matches to draw.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    token: Annotated[
        int | None,
        typer.Option(min=0, help="Draw one query token's map (see `search --explain`)."),
    ] = None,
    collection: CollectionOpt = None,
) -> None:
    """Draw over a page where it matches a query (its similarity map), as a PNG."""
    from indexer.heatmap import draw_match
    from indexer.wiring import open_documents
    from retrieval.models import describe_grid

    settings = settings_of(ctx, collection=collection)
    with user_errors(), open_store(settings) as store, open_documents(settings, store) as docs:
        image, match = draw_match(
            searcher_for(settings, store), docs, query, doc_id, page, token=token
        )
        image.save(out)
    grid = describe_grid(match.explanation.grid)
    console.print(f"wrote {out} ({image.width} x {image.height} px, grid {grid})")
