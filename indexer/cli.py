"""The ``colqwen`` command line: thin commands over the library.

Each command parses its arguments, calls one library function and prints the result. Our
errors become a one-line message and exit code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from retrieval.config import Settings
from retrieval.errors import ColqwenError

app = typer.Typer(
    name="colqwen",
    help="Search PDF collections by how their pages look (ColQwen2 + Qdrant).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def main(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Model hub id or local directory [COLQWEN_MODEL].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps [COLQWEN_DEVICE].")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Local data directory [COLQWEN_DATA_DIR].")
    ] = None,
    qdrant_url: Annotated[
        str | None, typer.Option(help="Qdrant server URL; unset = embedded [COLQWEN_QDRANT_URL].")
    ] = None,
) -> None:
    """Global options override the COLQWEN_* environment variables."""
    overrides = {"model": model, "device": device, "data_dir": data_dir, "qdrant_url": qdrant_url}
    ctx.obj = Settings(**{k: v for k, v in overrides.items() if v is not None})


def settings_of(ctx: typer.Context, **overrides) -> Settings:
    """The settings of this invocation, with per-command flags applied."""
    settings: Settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**{**settings.model_dump(), **changes}) if changes else settings


def fail(exc: ColqwenError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


@app.command()
def embed(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...) to embed.")],
    batch_size: Annotated[int | None, typer.Option(help="Pages per forward pass.")] = None,
) -> None:
    """Embed images and print each one's token grid and vector counts."""
    from retrieval.encoder import Encoder

    settings = settings_of(ctx, batch_size=batch_size)
    try:
        images = [_open_image(f) for f in files]
        with console.status(f"loading {settings.model}"):
            encoder = Encoder.from_settings(settings)
        pages = encoder.embed_pages(images)
    except ColqwenError as exc:
        raise fail(exc) from None
    table = Table(
        "file", "image px", "grid (rows x cols)", "visual", "tokens", "pooled rows", "pooled cols"
    )
    for f, image, page in zip(files, images, pages, strict=True):
        rows, cols = page.grid
        table.add_row(
            str(f),
            f"{image.width} x {image.height}",
            f"{rows} x {cols}",
            str(rows * cols),
            str(page.n_tokens),
            str(len(page.pooled_rows)),
            str(len(page.pooled_cols)),
        )
    console.print(table)


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from retrieval.errors import InvalidDocument

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise InvalidDocument(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidDocument(f"{path}: not a readable image ({exc})") from None


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
    from indexer.render import RenderOptions, parse_page_range
    from indexer.render_pool import Renderer, RenderRequest

    settings = settings_of(ctx)
    try:
        wanted = parse_page_range(pages) if pages else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pages") from None
    options = RenderOptions(max_visual_tokens=settings.max_visual_tokens, supersample=supersample)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(
        "page", "size (pt)", "rotation", "image (px)", "grid (rows x cols)", "tokens", "file"
    )
    request = RenderRequest(file, file.name, password=password, pages=wanted)
    try:
        with Renderer(options, workers=settings.render_workers) as renderer:
            for page in renderer.pages(request):
                target = out / f"{file.stem}-p{page.page_number:04d}.png"
                page.image.save(target)
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
    except ColqwenError as exc:
        raise fail(exc) from None
    console.print(table)
