"""The rough edges a new user of the CLI hit (issue 13, items 13-16), through Typer's runner."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.documents import make_pdf
from tests.test_ingest import BUDGET


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A data directory, and no COLQWEN_MODEL: the model comes from flags or the collection."""
    for key in ("COLQWEN_MODEL", "COLQWEN_QDRANT_URL", "COLQWEN_COLLECTION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLQWEN_MAX_VISUAL_TOKENS", str(BUDGET))
    monkeypatch.setenv("COLQWEN_DEVICE", "cpu")
    monkeypatch.setenv("COLQWEN_RENDER_WORKERS", "0")
    return tmp_path


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def test_search_uses_the_model_the_collection_was_built_with(env, tiny_model_dir):
    folder = env / "pdfs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf([(595, 842)] * 2))
    ingest = invoke("--model", str(tiny_model_dir), "ingest", str(folder), "--quiet")
    assert ingest.exit_code == 0, ingest.output
    found = invoke("search", "x", "--json")  # no --model: the collection's
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["hits"]) == 2


def test_a_relative_model_path_is_recorded_so_search_works_from_anywhere(
    env, tiny_model_dir, monkeypatch
):
    """`--model data/tiny-model` is a path relative to where ingest ran: the collection
    records it absolute (and by fingerprint), so a search from another folder loads it, and
    a copy of the checkpoint elsewhere serves it too; another checkpoint is refused before it
    loads."""
    import shutil

    work, elsewhere = env / "work", env / "elsewhere"
    (work / "data").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copytree(tiny_model_dir, work / "data" / "tiny-model")
    (work / "a.pdf").write_bytes(make_pdf([(595, 842)] * 2))
    monkeypatch.chdir(work)
    ingest = invoke("--model", "data/tiny-model", "ingest", "a.pdf", "--quiet")
    assert ingest.exit_code == 0, ingest.output
    monkeypatch.chdir(elsewhere)
    found = invoke("search", "x", "--json")
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["hits"]) == 2
    listed = json.loads(invoke("collections", "list", "--json").stdout)
    [info] = [c for c in listed if c["name"] == "pages"] if isinstance(listed, list) else [listed]
    assert info["model"] == str((work / "data" / "tiny-model").resolve())
    shutil.copytree(tiny_model_dir, elsewhere / "copy")  # same files, another name and place
    assert invoke("--model", "copy", "search", "x", "--json").exit_code == 0
    from tests.tiny_model import write_tiny_model

    other = write_tiny_model(elsewhere / "tiny-model", seed=1)  # same name, other weights
    refused = invoke("--model", str(other), "search", "x")
    assert refused.exit_code == 1 and "was built with" in refused.stderr


def test_empty_folders_say_what_to_do(env, tiny_model_dir):
    empty = env / "empty"
    empty.mkdir()
    result = invoke("--model", str(tiny_model_dir), "ingest", str(empty))
    assert result.exit_code == 1 and "no files matching *.pdf" in result.stderr
    nested = env / "nested"
    (nested / "sub").mkdir(parents=True)
    (nested / "sub" / "a.pdf").write_bytes(make_pdf([(595, 842)]))
    result = invoke("--model", str(tiny_model_dir), "ingest", str(nested))
    assert result.exit_code == 1 and "1 in subfolders: add -r" in result.stderr
    as_json = invoke("--model", str(tiny_model_dir), "ingest", str(empty), "--json")
    assert json.loads(as_json.stdout)["error"] == "invalid_input"


def test_upper_case_extensions_are_found(env, tiny_model_dir):
    folder = env / "scans"
    folder.mkdir()
    (folder / "SCAN.PDF").write_bytes(make_pdf([(595, 842)]))
    result = invoke("--model", str(tiny_model_dir), "ingest", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["indexed"] == 1


def test_an_empty_store_says_to_ingest_first(env):
    for args in (["docs", "list"], ["search", "x"], ["collections", "upgrade", "pages"]):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert "does not exist yet" in result.stderr and "colqwen ingest" in result.stderr
    result = invoke("docs", "list", "--json")
    assert json.loads(result.stdout) == {
        "error": "not_found",
        "detail": json.loads(result.stdout)["detail"],
    }


def all_commands():
    yield []
    for group, commands in {
        "": ["ingest", "search", "serve", "worker", "embed", "render"],
        "docs": ["list", "show", "delete"],
        "collections": ["list", "create", "drop", "upgrade"],
        "jobs": ["migrate"],
    }.items():
        for command in commands:
            yield [group, command] if group else [command]


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_help_shows_plain_types_and_choices(command):
    text = CliRunner().invoke(app, [*command, "--help"], terminal_width=200).stdout
    for python_type in ("<list[", "<bool>", "<str>", "<int>", "<path>", "<Path>"):
        assert python_type not in text, (command, python_type)
    if command == ["search"]:  # the choices, plainly (the help's table may wrap the last ones)
        assert "[two_stage|exact|pooled|" in text and "text]" in text
    if command == ["ingest"]:
        assert "[default: *.pdf, and office" in text


def test_tables_are_not_cut_when_piped(env, tiny_model_dir):
    folder = env / "pdfs"
    folder.mkdir()
    name = "a-rather-long-file-name-of-a-quarterly-report-2024-final.pdf"
    (folder / name).write_bytes(make_pdf([(595, 842)]))
    assert invoke("--model", str(tiny_model_dir), "ingest", str(folder), "--quiet").exit_code == 0
    assert name in invoke("docs", "list").stdout
    assert name in invoke("search", "x").stdout


def test_grids_read_rows_by_cols_like_the_readme(env, tmp_path, tiny_model_dir):
    pdf = tmp_path / "a4.pdf"
    pdf.write_bytes(make_pdf([(595.28, 841.89)]))
    result = invoke("--data-dir", str(tmp_path), "render", str(pdf), "--out", str(tmp_path / "png"))
    assert result.exit_code == 0, result.output
    assert "grid (rows x cols)" in result.stdout
    # README: "A4: 644 x 924 px, a grid of 33 x 23 tokens" at the default 768-token budget.
    full = CliRunner().invoke(
        app,
        ["--model", str(tiny_model_dir), "render", str(pdf), "--out", str(tmp_path / "png")],
        env={"COLQWEN_MAX_VISUAL_TOKENS": "768"},
    )
    assert "644 x 924" in full.stdout and "33 x 23" in full.stdout


def test_progress_names_the_index_build_and_agrees_with_the_summary(env, tiny_model_dir):
    folder = env / "pdfs"
    folder.mkdir()
    for i in range(3):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([(595, 842)] * (6 + i)))
    result = invoke("--model", str(tiny_model_dir), "ingest", str(folder))
    assert result.exit_code == 0, result.output
    bars = {line.split()[0]: line for line in result.stderr.splitlines() if line.strip()}
    assert "index" in bars  # the last phase is shown, not minutes of silence
    bar_rate = float(re.search(r"([\d.]+)/s", bars["pages"]).group(1))
    summary_rate = float(re.search(r"\(([\d.]+) pages/s\)", result.stdout).group(1))
    assert bar_rate == pytest.approx(summary_rate, rel=0.35), (bars["pages"], result.stdout)
    assert "search index built in" in result.stdout


def test_what_a_new_user_hits_is_said_plainly(env, tiny_model_dir):
    """A link to nothing is a failed file with its reason (not skipped without a word); an
    empty file gets the API's message; a missing collection 'does not exist'; counts are
    singular when they are one."""
    folder = env / "pdfs"
    folder.mkdir()
    (folder / "one.pdf").write_bytes(make_pdf([(595, 842)]))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "gone.pdf").symlink_to(env / "nowhere.pdf")
    result = invoke("--model", str(tiny_model_dir), "ingest", str(folder), "--json")
    report = json.loads(result.stdout)
    errors = {d["name"]: d["error"] for d in report["documents"] if d["status"] == "failed"}
    assert errors["gone.pdf"] == f"gone.pdf: a link to {env / 'nowhere.pdf'}, which does not exist"
    assert errors["empty.pdf"] == "empty.pdf: the file is empty"  # what an upload of it is told
    solo = ("--collection", "solo")
    summary = invoke("--model", str(tiny_model_dir), "ingest", str(folder / "one.pdf"), *solo)
    assert "1 page embedded" in summary.stdout
    assert not re.search(r"(?<![\d.])1 pages", summary.stdout)
    assert invoke("docs", "list", *solo).stdout.strip().endswith("1 document")
    dropped = invoke("collections", "drop", "nosuch", "--yes")
    assert dropped.exit_code == 1
    assert "collection 'nosuch' does not exist: nothing to drop" in dropped.stderr
    assert "ingest documents into it" not in dropped.stderr
