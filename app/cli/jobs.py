"""``colqwen jobs``: the ingestion queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from app.cli.base import app, console, settings_of, user_errors

jobs_app = typer.Typer(help="The ingestion queue.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("migrate")
def jobs_migrate(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="The embedded deployment's data directory (its jobs.sqlite3 and uploads/).",
        ),
    ],
) -> None:
    """Move an embedded deployment's queued jobs and kept originals into the database of a
    distributed one (COLQWEN_DATABASE_URL, with COLQWEN_SECRET_KEY): stop it first. Its pages
    stay where they are (a Qdrant server already, or move them with Qdrant's snapshots)."""
    from indexer.migrate import migrate_embedded

    settings = settings_of(ctx)
    with (
        user_errors(),
        Progress("migrating", BarColumn(), MofNCompleteColumn(), console=console) as bar,
    ):
        task = bar.add_task("migrating", total=None)
        moved = migrate_embedded(
            source,
            settings,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"moved {moved.jobs} queued jobs ({moved.skipped} queued there already) and "
        f"{moved.originals} originals into the database"
    )
