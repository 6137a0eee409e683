"""How messages say counts: "1 page", "3 pages", every time."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: count(1, "page") -> "1 page"."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
