"""The ``colqwen`` command line, one module per command group: ``base`` (the app, options,
error reporting, the store and model helpers), ``ingest``, ``search`` (and ``heatmap``),
``catalog`` (documents, collections), ``jobs`` (the queue), ``evaluate``, ``inspect``
(render, embed), ``models``, ``serve`` (the API and the worker). Commands parse, call one use
case (``indexer.ingest``, ``retrieval.search``, ...) and format."""

from app.cli import catalog, evaluate, ingest, inspect, jobs, models, search, serve  # noqa: F401 - registers the commands
from app.cli.base import app

__all__ = ["app"]
