"""Model families: everything that depends on which late-interaction model embeds the pages.

One module per family, as colpali-engine lays them out; three page geometries between them
(``qwen2.QwenVL``: a dynamic grid of fixed-size tokens; ``paligemma.SquareImage``: one fixed
square; ``idefics3.Tiles``: tiles plus a global view). A family knows its checkpoint classes,
how a page maps to an image and a token grid, how the model's visual tokens (found by the image
token id) lay out on that grid, and how many prompt tokens surround them. The renderer, the
encoder and the pipeline ask the family; nothing else knows a model's geometry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from retrieval.errors import ConfigurationError
from retrieval.models.base import Family, describe_grid
from retrieval.models.gemma3 import COLGEMMA3
from retrieval.models.idefics3 import COLIDEFICS3
from retrieval.models.modernvbert import COLMODERNVBERT
from retrieval.models.paligemma import COLPALI
from retrieval.models.qwen2 import COLQWEN2
from retrieval.models.qwen2_5 import COLQWEN2_5
from retrieval.models.qwen3 import COLQWEN3
from retrieval.models.qwen3_5 import COLQWEN3_5
from retrieval.models.qwen_omni import COLQWEN2_5_OMNI

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        COLQWEN2,
        COLQWEN2_5,
        COLQWEN2_5_OMNI,
        COLQWEN3,
        COLQWEN3_5,
        COLPALI,
        COLGEMMA3,
        COLIDEFICS3,
        COLMODERNVBERT,
    )
}

# Hub names that say their family, most specific first.
_NAMES = [
    (re.compile(r"colqwen[-_.]?(2[._]5[-_.]?)?omni", re.I), "colqwen2_5_omni"),
    (re.compile(r"colqwen3[._]5", re.I), "colqwen3_5"),
    (re.compile(r"colqwen3", re.I), "colqwen3"),
    (re.compile(r"colqwen2[._]5", re.I), "colqwen2_5"),
    (re.compile(r"colqwen2?", re.I), "colqwen2"),
    (re.compile(r"colpali", re.I), "colpali"),
    (re.compile(r"colgemma", re.I), "colgemma3"),
    (re.compile(r"colsmol|colidefics", re.I), "colidefics3"),
    (re.compile(r"colmodernvbert", re.I), "colmodernvbert"),
]


def family(name: str) -> Family:
    """The family called ``name``; a clear error naming the supported ones otherwise."""
    try:
        found = FAMILIES[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown model family '{name}': use one of {', '.join(sorted(FAMILIES))}"
        ) from None
    if found.unavailable:
        raise ConfigurationError(f"model family '{name}' cannot run here: {found.unavailable}")
    return found


def recorded(name: str, geometry: dict[str, int] | None) -> Family:
    """Family ``name`` with the geometry a collection recorded (``Family.params``) when it was
    made; the family's defaults for collections made before they recorded it."""
    return family(name).with_params(geometry)


def resolve(name: str, model: str) -> Family:
    """The family of checkpoint ``model``: ``name``, or with ``auto`` the one its config (or an
    adapter's base config) declares, else the one its hub name says; a hub id that says
    nothing is taken for ColQwen2, the default (its loading then tells whether it is)."""
    if name != "auto":
        return family(name)
    path = Path(model).expanduser()
    found = _from_checkpoint(path) or _from_name(model)
    if found is None and not path.exists():
        return COLQWEN2
    if found is None:
        raise ConfigurationError(
            f"cannot tell the model family of '{model}': set COLQWEN_MODEL_FAMILY to one of "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return family(found)


def _from_checkpoint(path: Path) -> str | None:
    config, adapter = path / "config.json", path / "adapter_config.json"
    if config.is_file():
        data = _json(config)
        for arch in data.get("architectures") or []:
            for f in FAMILIES.values():
                if arch == f.model_cls:
                    return f.name
        model_type = data.get("model_type", "")
        return next((f.name for f in FAMILIES.values() if model_type in f.model_types), None)
    if adapter.is_file():
        base = str(_json(adapter).get("base_model_name_or_path") or "")
        return _from_checkpoint(Path(base).expanduser()) or _from_name(base)
    return None


def _from_name(ref: str) -> str | None:
    return next((name for pattern, name in _NAMES if pattern.search(ref)), None)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = [
    "COLQWEN2",
    "COLQWEN2_5",
    "FAMILIES",
    "Family",
    "describe_grid",
    "family",
    "recorded",
    "resolve",
]
