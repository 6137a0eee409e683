"""``colqwen eval``: retrieval quality on a labelled set, per search mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from app.cli.base import (
    CollectionOpt,
    JsonOpt,
    app,
    console,
    err_console,
    open_store,
    print_json,
    searcher_for,
    settings_of,
    user_errors,
)
from retrieval.errors import InvalidInput

METRICS = ("ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr")


@app.command("eval")
def evaluate_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path,
        typer.Argument(help="A BEIR-style folder: queries.jsonl, corpus.jsonl, qrels/test.tsv."),
    ],
    modes: Annotated[
        str, typer.Option(help="Comma-separated search modes to score.")
    ] = "text,two_stage,hybrid",
    prefetch: Annotated[
        str | None,
        typer.Option(help="Comma-separated prefetch depths to sweep (two_stage, hybrid)."),
    ] = None,
    fidelity: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also score each mode's top 10 against exact MaxSim on this "
            "many queries (recall@10).",
        ),
    ] = 0,
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """nDCG@5/10, recall@1/5/10/100 and MRR per search mode on a labelled set."""
    from retrieval.evaluation import Dataset, evaluate
    from retrieval.store import SEARCH_MODES

    settings = settings_of(ctx, collection=collection)
    with user_errors(as_json):
        wanted = [m.strip() for m in modes.split(",") if m.strip()]
        if bad := [m for m in wanted if m not in SEARCH_MODES]:
            raise InvalidInput(f"--modes: unknown {bad}; use {', '.join(SEARCH_MODES)}")
        try:
            depths = [int(p) for p in prefetch.split(",")] if prefetch else [None]
        except ValueError:
            raise InvalidInput("--prefetch: comma-separated integers, e.g. 50,150") from None
        data = Dataset.load(dataset)
        with open_store(settings) as store:
            store.collection(settings.collection)  # a missing collection: before any model
            searcher = searcher_for(settings, store, cache_queries=True)

            def search(text: str, mode: str, depth: int | None) -> list[tuple[str, int]]:
                hits = searcher.search(text, top_k=100, mode=mode, prefetch=depth).hits
                return [(h.doc_id, h.page) for h in hits]

            runs = sum(len(depths) if m in ("two_stage", "hybrid") else 1 for m in wanted)
            with Progress(console=err_console, disable=as_json) as bar:
                task = bar.add_task("evaluating", total=runs * len(data.qrels))
                results = evaluate(
                    data,
                    search,
                    wanted,
                    depths,
                    fidelity_sample=fidelity,
                    on_query=lambda: bar.advance(task),
                )
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    table = Table("mode", "prefetch", *METRICS, "ms/query", "fidelity@10", title=str(dataset))
    for r in results:
        table.add_row(
            r.mode,
            "-" if r.prefetch is None else str(r.prefetch),
            *(f"{r.metrics[m]:.3f}" for m in METRICS),
            f"{r.ms_per_query:.0f}",
            "-" if r.fidelity is None else f"{r.fidelity:.2f}",
        )
    console.print(table)
    console.print(f"{results[0].queries if results else 0} queries with relevance judgements")
