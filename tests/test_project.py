"""Project-level promises: what README tells a newcomer is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict[str, str]:
    """The two set-up commands, from the README's 'Quick start' code block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Quick start' section with a bash block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 2, f"README's quick start must hold exactly two commands, got {lines}"
    return {"run": lines[0], "test": lines[1]}


def test_ci_runs_the_readme_test_command_word_for_word():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()["test"] in ci


def test_settings_read_prefixed_environment(monkeypatch, tmp_path):
    from retrieval.config import Settings

    monkeypatch.setenv("COLQWEN_MODEL", "/models/x")
    monkeypatch.setenv("COLQWEN_MAX_VISUAL_TOKENS", "512")
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLQWEN_QDRANT_URL", "")
    settings = Settings(_env_file=None)
    assert settings.model == "/models/x"
    assert settings.max_visual_tokens == 512
    assert settings.data_dir == tmp_path
    assert settings.qdrant_url is None  # empty means embedded
    assert Settings(_env_file=None, model="override").model == "override"


def test_only_the_settings_module_reads_the_environment():
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("retrieval", "indexer", "app")
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "config.py" and ("os.environ" in p.read_text() or "os.getenv" in p.read_text())
    ]
    assert offenders == []


def test_searches_go_through_the_one_search_use_case():
    """The API, the CLI and the evaluation search and explain through
    ``retrieval.search.Searcher``: nothing else calls the store's search or explains a page
    itself. (The fidelity check's exact re-run of a served search is the one other caller:
    it is the oracle, not a search.)"""
    allowed = {"retrieval/search.py", "retrieval/fidelity.py"}
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for pkg in ("app", "indexer", "retrieval")
        for path in (ROOT / pkg).rglob("*.py")
        if str(path.relative_to(ROOT)) not in allowed
        for line in path.read_text().splitlines()
        if re.search(r"\bstore\.search\(|\bexplain_page\(", line)
        and not line.lstrip().startswith("def ")
    ]
    assert offenders == []


def test_imports_go_one_way():
    """app -> indexer -> retrieval: no package imports one above it."""
    above = {"retrieval": ("indexer", "app"), "indexer": ("app",)}
    offenders = []
    for pkg, forbidden in above.items():
        for path in (ROOT / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                if re.match(rf"\s*(from|import) ({'|'.join(forbidden)})\b", line):
                    offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []


def test_readme_documents_every_setting():
    from retrieval.config import Settings

    text = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`COLQWEN_{n.upper()}`" not in text]
    assert missing == []
