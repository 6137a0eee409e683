"""Model families: everything that depends on which late-interaction model embeds the pages.

One module per family, as colpali-engine lays them out. A family knows its checkpoint classes,
how many pixels make one visual token, how a page maps to a token grid within a budget, the
budget its checkpoints were trained with, and how many prompt tokens surround a page's image.
The renderer, the encoder and the pipeline ask the family; nothing else knows a model's geometry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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


# What a checkpoint's config.json says (model_type), or its hub name, for each family.
_MODEL_TYPES = {"qwen2_vl": "colqwen2", "qwen2_5_vl": "colqwen2_5"}
_NAMES = [
    (re.compile(r"colqwen2[._]5", re.I), "colqwen2_5"),
    (re.compile(r"colqwen2", re.I), "colqwen2"),
]


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
    return FAMILIES[found]


def _from_checkpoint(path: Path) -> str | None:
    config, adapter = path / "config.json", path / "adapter_config.json"
    if config.is_file():
        data = _json(config)
        for arch in data.get("architectures") or []:
            for f in FAMILIES.values():
                if arch == f.model_cls:
                    return f.name
        return _MODEL_TYPES.get(data.get("model_type", ""))
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


__all__ = ["COLQWEN2", "COLQWEN2_5", "FAMILIES", "Family", "family", "resolve"]
