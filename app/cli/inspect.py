"""Commands to see what the model sees: ``render`` and ``embed``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.base import app, console, err_console, settings_of, user_errors


@app.command()
def embed(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="PDFs or images to embed.")],
    pages: Annotated[
        str | None, typer.Option(help="Pages of each file, e.g. 1-3 (default all).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pages per forward pass.")] = None,
) -> None:
    """Render and embed files, and print each page's token grid and vector counts."""
    from indexer.ingest import embed_files
    from indexer.render import parse_page_range
    from retrieval.encoder import Encoder

    settings = settings_of(ctx, batch_size=batch_size)
    table = Table(
        "file",
        "page",
        "image px",
        "grid (rows x cols)",
        "visual",
        "tokens (+ prompt)",
        "pooled rows (+ prompt)",
        "pooled cols (+ prompt)",
    )
    with user_errors():
        wanted = parse_page_range(pages) if pages else None
        with console.status(f"loading {settings.model}"):
            encoder = Encoder.from_settings(settings)
        embedded = embed_files(settings, encoder, files, wanted)
    for f, page, emb in embedded:
        rows, cols = emb.grid
        prompt = len(emb.special)  # prompt tokens, and a global view where the family has one
        table.add_row(
            f.name,
            str(page.page_number),
            f"{page.pixel_size[0]} x {page.pixel_size[1]}",
            f"{rows} x {cols}",
            str(rows * cols),
            f"{emb.n_tokens - prompt} + {prompt}",
            f"{rows} + {prompt}",
            f"{cols} + {prompt}",
        )
    console.print(table)


@app.command()
def render(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A PDF or an image (PNG, JPEG, TIFF, WebP).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write PNGs to.")],
    pages: Annotated[
        str | None, typer.Option(help="Pages to render, e.g. 1-3,7 (default all).")
    ] = None,
    password: Annotated[str | None, typer.Option(help="Password of an encrypted PDF.")] = None,
    supersample: Annotated[
        int, typer.Option(min=1, max=4, help="Render at k x then downsample.")
    ] = 1,
) -> None:
    """Render pages exactly as the model will see them, and print each page's size and grid."""
    from indexer.render import parse_page_range
    from indexer.render_pool import Renderer, RenderRequest
    from retrieval.shared_image import load

    settings = settings_of(ctx)
    with user_errors():
        wanted = parse_page_range(pages) if pages else None
    with user_errors():
        options = replace(_checkpoint_options(settings), supersample=supersample)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(
        "page", "size (pt)", "rotation", "image (px)", "grid (rows x cols)", "tokens", "file"
    )
    request = RenderRequest(file, file.name, password=password, pages=wanted)
    with user_errors(), Renderer(options, workers=settings.render_workers) as renderer:
        for page in renderer.pages(request):
            target = out / f"{file.stem}-p{page.page_number:04d}.png"
            load(page.image).save(target)
            rows, cols = page.grid
            table.add_row(
                str(page.page_number),
                f"{page.size_pt[0]:g} x {page.size_pt[1]:g}",
                str(page.rotation),
                f"{page.pixel_size[0]} x {page.pixel_size[1]}",
                f"{rows} x {cols}",
                str(rows * cols),
                str(target),
            )
    console.print(table)


def _checkpoint_options(settings):
    """Render options with the configured checkpoint's geometry (its processor, loaded without
    the model); where it cannot be read, the family's defaults, with a warning saying so."""
    from indexer.render import RenderOptions
    from retrieval.errors import ModelLoadError
    from retrieval.models import resolve

    try:
        return RenderOptions.from_settings(settings)
    except ModelLoadError as exc:
        family = resolve(settings.model_family, settings.model)
        err_console.print(
            f"[yellow]warning[/]: {exc}\nrendering with {family.name}'s default geometry; the "
            "checkpoint's own may differ"
        )
        return RenderOptions.from_settings(settings, family)
