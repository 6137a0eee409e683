"""``colqwen models``: the model families this build runs, and what each makes of a page."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli.base import JsonOpt, app, console, print_json, settings_of


@app.command()
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Model families: classes, page geometry, tokens per A4 page, and known checkpoints."""
    from retrieval.models import FAMILIES

    budget = settings_of(ctx).max_visual_tokens
    rows = []
    for f in FAMILIES.values():
        visual, total = f.tokens_per_page(595, 842, budget)
        rows.append(
            {
                "family": f.name,
                "model_class": f.model_cls,
                "geometry": f.geometry,
                "a4_visual_tokens": visual,
                "a4_tokens": total,
                "dim": f.dim,
                "model_types": list(f.model_types),
                "checkpoints": list(f.examples),
                "available": f.unavailable is None,
                "unavailable": f.unavailable,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(
        "family", "colpali-engine class", "how it sees a page", f"A4 tokens (budget {budget})",
        "dim", "checkpoints",
    )  # fmt: skip
    for r in rows:
        tokens = f"{r['a4_visual_tokens']} visual, {r['a4_tokens']} in all"
        name = r["family"] if r["available"] else f"{r['family']} [red](unavailable)[/]"
        table.add_row(
            name,
            r["model_class"],
            r["geometry"],
            tokens,
            str(r["dim"]),
            ", ".join(r["checkpoints"]) or "-",
        )
    console.print(table)
    for r in rows:
        if not r["available"]:
            console.print(f"{r['family']}: {r['unavailable']}")
    console.print(
        "The family is read from the checkpoint (COLQWEN_MODEL); COLQWEN_MODEL_FAMILY overrides."
    )
