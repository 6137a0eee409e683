"""The Typer app, its global options, and helpers every command uses.

Commands are thin: parse, call one library function, print. Our errors become a one-line
message and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from retrieval.config import Settings
from retrieval.errors import ColqwenError

if TYPE_CHECKING:
    from retrieval.types import CollectionInfo

app = typer.Typer(
    name="colqwen",
    help="Search PDF collections by how their pages look (ColQwen2 + Qdrant).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _plain_type(param, ctx) -> str | None:
    """What --help shows for a value: plain metavars (TEXT, INTEGER, PATH..., [a|b]) and none
    for flags, where typer would show Python types (``<list[Path]>``, ``<bool>``)."""
    if param.metavar is not None:
        return param.metavar
    label = param.display_type(ctx).strip("<>")
    if label == "bool" or getattr(param, "is_flag", False):
        return None
    many = label.startswith("list[")
    label = label.removeprefix("list[").removesuffix("]")
    if param.type_descriptor.is_choice:
        shown = f"[{label}]"
    else:
        shown = _PLAIN.get(label.split()[0].lower(), label.upper())
    return f"{shown}..." if many or param.nargs != 1 else shown


_PLAIN = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}
typer.core.TyperOption.display_type_rich = _plain_type
typer.core.TyperArgument.display_type_rich = _plain_type


def _console(stderr: bool = False) -> Console:
    """A console as wide as the terminal; piped into a file, wide enough for our tables."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 160
    return Console(stderr=stderr, width=width, soft_wrap=stderr)


console = _console()
err_console = _console(stderr=True)  # errors stay on one line

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
def user_errors(as_json: bool = False):
    """Our errors -> 'error: ...' on stderr (``{"error", "detail"}`` on stdout with --json) and
    exit code 1; Ctrl-C -> one line and exit code 130."""
    try:
        yield
    except ColqwenError as exc:
        report_error(exc, as_json)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: nothing is lost; run the command again to resume"
        )
        raise typer.Exit(code=130) from None


def report_error(exc: ColqwenError, as_json: bool = False) -> None:
    if as_json:
        print_json({"error": _kind(exc), "detail": str(exc)})
    else:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")


def _kind(exc: ColqwenError) -> str:
    """snake_case of the error's class: NotFound -> not_found."""
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


@contextmanager
def open_store(settings: Settings, *, warm: bool = False):
    """The store, closed on exit; ``warm``: its files read into memory in the background
    meanwhile (a search's model loads for seconds: the store is warm when it is done)."""
    from retrieval.store import PageStore

    store = PageStore.from_settings(settings)
    if warm:
        store.warm_up_in_background()
    try:
        yield store
    finally:
        store.close()


def load_encoder_for(settings: Settings, info: CollectionInfo, *, quiet: bool = False):
    """The model that searches collection ``info``: the one it was built with, unless --model
    or COLQWEN_MODEL names another; loaded with a spinner on stderr (none when ``quiet``)."""
    from contextlib import nullcontext

    from retrieval.checkpoint import identify
    from retrieval.encoder import Encoder

    if "model" not in settings.model_fields_set:
        settings = settings.model_copy(update={"model": info.model})
    # Refused before minutes of loading: a model that is not the collection's.
    info.check_model(identify(settings.model), action="search")
    with nullcontext() if quiet else err_console.status(f"loading {settings.model}"):
        return Encoder.from_settings(settings)


def searcher_for(settings: Settings, store, *, quiet: bool = False, cache_queries: bool = False):
    """The search use case over ``store`` (``retrieval.search.Searcher``), loading a
    collection's model (``load_encoder_for``) the first time a query needs it: never for
    text search, never before every check that needs no model. ``cache_queries``: each
    distinct query embedded once (an evaluation runs each query in several modes)."""
    from functools import cache

    from retrieval.search import QueryModel, Searcher

    loaded: dict[str, QueryModel] = {}

    def models(info: CollectionInfo) -> QueryModel:
        if info.name not in loaded:
            encoder = load_encoder_for(settings, info, quiet=quiet)
            embed = cache(lambda text: encoder.embed_queries([text])[0]) if cache_queries else None
            loaded[info.name] = QueryModel(encoder, embed)
        return loaded[info.name]

    return Searcher(store, models, collection=settings.collection)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
