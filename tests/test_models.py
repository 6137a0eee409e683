"""Model families: the one place a model's geometry lives."""

from __future__ import annotations

import pytest

from retrieval.config import Settings
from retrieval.errors import ConfigurationError
from retrieval.models import FAMILIES, family


def test_every_family_renders_pages_at_a_size_its_processor_leaves_as_it_is():
    for f in FAMILIES.values():
        for size in [(595, 842), (612, 792), (842, 595), (2000, 300), (300, 2000)]:
            grid = f.grid_for(*size, 768)
            width, height = f.size_for(*size, 768)
            assert f.processed_size((width, height)) == (width, height), (f.name, size)
            assert f.grid_of((width, height), 768) == grid
            if f.name.startswith("colqwen"):
                assert grid[0] * grid[1] <= 768
            else:  # the rendered image is tiled (or squared) exactly as the page was
                assert f.grid_for(width, height, 768) == grid, (f.name, size)


def test_unknown_families_are_refused_with_the_supported_ones_named():
    names = ", ".join(sorted(FAMILIES))
    with pytest.raises(ConfigurationError, match=names):
        family("colpali9")
    with pytest.raises(ValueError, match=f"auto or one of {names}"):
        Settings(_env_file=None, model_family="colpali9")


def test_a_family_the_installed_libraries_cannot_run_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigurationError, match=r"cannot run here: colpali-engine 0\.3\.18"):
        family("colqwen2_5_omni")
    omni = tmp_path / "omni"
    omni.mkdir()
    (omni / "config.json").write_text('{"model_type": "qwen2_5_omni_thinker"}')
    from retrieval.models import resolve

    with pytest.raises(ConfigurationError, match="ColQwen2_5Omni cannot be constructed"):
        resolve("auto", str(omni))


@pytest.mark.parametrize(
    ("hub_id", "expected"),
    [
        ("vidore/colqwen2-v1.0", "colqwen2"),
        ("vidore/colqwen2.5-v0.2", "colqwen2_5"),
        ("someone/colqwen3-embed-4b", "colqwen3"),
        ("someone/ColQwen3.5-4.5B", "colqwen3_5"),
        ("vidore/colpali-v1.3", "colpali"),
        ("someone/colgemma3-4b", "colgemma3"),
        ("vidore/colSmol-256M", "colidefics3"),
        ("ModernVBERT/colmodernvbert", "colmodernvbert"),
    ],
)
def test_the_family_is_read_from_a_hub_name(hub_id, expected):
    from retrieval.models import resolve

    assert resolve("auto", hub_id).name == expected


def test_every_family_is_read_from_its_config_model_type(tmp_path):
    from retrieval.models import resolve

    for f in FAMILIES.values():
        if f.unavailable:
            continue
        for model_type in f.model_types:
            path = tmp_path / model_type
            path.mkdir()
            (path / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
            assert resolve("auto", str(path)).name == f.name


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
