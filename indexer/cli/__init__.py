"""The ``colqwen`` command line, one module per command group."""

from indexer.cli import catalog, evaluate, ingest, inspect, models, search  # noqa: F401 - registers the commands
from indexer.cli.base import app

__all__ = ["app"]
