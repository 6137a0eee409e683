"""Model families: everything that depends on which late-interaction model embeds the pages.

One module per family, as colpali-engine lays them out. A family knows its checkpoint classes,
how many pixels make one visual token, how a page maps to a token grid within a budget, the
budget its checkpoints were trained with, and how many prompt tokens surround a page's image.
The renderer, the encoder and the pipeline ask the family; nothing else knows a model's geometry.
"""

from __future__ import annotations

from retrieval.errors import ConfigurationError
from retrieval.models.base import Family
from retrieval.models.qwen2 import COLQWEN2, COLQWEN2_5

FAMILIES: dict[str, Family] = {f.name: f for f in (COLQWEN2, COLQWEN2_5)}


def family(name: str) -> Family:
    """The family called ``name``; a clear error naming the supported ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown model family '{name}': use one of {', '.join(sorted(FAMILIES))}"
        ) from None


__all__ = ["COLQWEN2", "COLQWEN2_5", "FAMILIES", "Family", "family"]
