"""Model families: the one place a model's geometry lives."""

from __future__ import annotations

import pytest

from retrieval.config import Settings
from retrieval.errors import ConfigurationError
from retrieval.models import FAMILIES, family


def test_every_family_maps_pages_to_pixels_it_turns_back_into_the_same_grid():
    for f in FAMILIES.values():
        for size in [(595, 842), (612, 792), (842, 595), (2000, 300), (300, 2000)]:
            grid = f.grid_for(*size, f.trained_budget)
            assert grid[0] * grid[1] <= f.trained_budget
            assert f.size_for(*size, f.trained_budget) == f.pixels_for(grid)


def test_unknown_families_are_refused_with_the_supported_ones_named():
    with pytest.raises(ConfigurationError, match="colqwen2, colqwen2_5"):
        family("colpali9")
    with pytest.raises(ValueError, match="auto or one of colqwen2, colqwen2_5"):
        Settings(_env_file=None, model_family="colpali9")


def test_nothing_outside_the_family_modules_knows_the_token_size():
    """The geometry lives in retrieval/models: no bare 28-pixel tokens or 11 prompt tokens."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for pkg in ("retrieval", "indexer", "app"):
        for path in (root / pkg).rglob("*.py"):
            if "models" in path.relative_to(root).parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if re.search(r"\* 28\b|\b28 \*|SPECIAL_TOKENS|\b14 \* ", code):
                    offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_family_is_read_from_the_checkpoint(tiny_model_dir, tiny_adapter_dir, tmp_path):
    import json
    import shutil

    from retrieval.models import resolve

    assert resolve("auto", str(tiny_model_dir)).name == "colqwen2"  # architectures: ColQwen2
    assert resolve("auto", str(tiny_adapter_dir)).name == "colqwen2"  # through its local base
    other = tmp_path / "qwen25"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["ColQwen2_5"]}))
    assert resolve("auto", str(other)).name == "colqwen2_5"
    assert resolve("colqwen2", str(other)).name == "colqwen2"  # the setting overrides
    assert resolve("auto", "vidore/colqwen2.5-v0.2").name == "colqwen2_5"  # by hub name
    assert resolve("auto", "vidore/colqwen2-v1.0").name == "colqwen2"
    assert resolve("auto", "someone/some-retriever").name == "colqwen2"  # the default
    mystery = tmp_path / "mystery"
    mystery.mkdir()
    (mystery / "config.json").write_text('{"model_type": "something_else"}')
    with pytest.raises(ConfigurationError, match="COLQWEN_MODEL_FAMILY"):
        resolve("auto", str(mystery))
