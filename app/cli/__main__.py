"""``python -m app.cli``: the ``colqwen`` command."""

from app.cli import app

app()
