"""The Typer app, its global options, and helpers every command uses.

Commands are thin: parse, call one library function, print. Our errors become a one-line
message and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from retrieval.config import Settings
from retrieval.errors import ColqwenError, StoreLocked

app = typer.Typer(
    name="colqwen",
    help="Search PDF collections by how their pages look (ColQwen2 + Qdrant).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors stay on one line

CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection [COLQWEN_COLLECTION].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


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
    try:
        ctx.obj = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def settings_of(ctx: typer.Context, **overrides: Any) -> Settings:
    """The settings of this invocation, with per-command flags applied."""
    root = ctx.find_root()
    settings: Settings = root.obj if isinstance(root.obj, Settings) else Settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    try:
        return Settings(**{**settings.model_dump(), **changes})
    except ValueError as exc:  # pydantic's ValidationError: a bad flag value
        raise typer.BadParameter(str(exc)) from None


@contextmanager
def user_errors():
    """Our errors -> 'error: ...' on stderr and exit code 1."""
    try:
        yield
    except StoreLocked as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    except ColqwenError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None


@contextmanager
def open_store(settings: Settings):
    from retrieval.store import PageStore

    store = PageStore.from_settings(settings)
    try:
        yield store
    finally:
        store.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
