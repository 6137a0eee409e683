"""Entry point of the ``colqwen`` console script: the indexer's commands plus the service's."""

from __future__ import annotations

from indexer.cli import app

__all__ = ["app"]


if __name__ == "__main__":
    app()
