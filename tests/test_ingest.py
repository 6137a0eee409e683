"""Bulk ingestion through the real CLI, with the tiny model, the real renderer and the embedded
Qdrant engine. A 64-token page budget keeps it fast on 2 cores; the code path is the same."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from indexer.render import RenderOptions, open_document
from tests.conftest import shared_pdfs
from tests.documents import make_pdf

BUDGET = 64
GOOD_PAGES = 371  # every page of ../shared/pdfs/good
RENDERABLE_BAD_PAGES = 2  # hugemono.pdf and enormous.pdf render within the budget
BAD_FILES = 10


@pytest.fixture
def env(tiny_model_dir, tmp_path, monkeypatch):
    """Settings for a CLI run: tiny model, small page budget, a fresh data directory."""
    data = tmp_path / "data"
    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("COLQWEN_MAX_VISUAL_TOKENS", str(BUDGET))
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(data))
    monkeypatch.setenv("COLQWEN_DEVICE", "cpu")
    monkeypatch.setenv("COLQWEN_BATCH_SIZE", "8")
    monkeypatch.setenv("COLQWEN_RENDER_WORKERS", "2")
    monkeypatch.delenv("COLQWEN_QDRANT_URL", raising=False)
    return data


def cli(*args: str, code: int | None = 0) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, result.output
    return result.stdout


def cli_json(*args: str, code: int | None = 0):
    return json.loads(cli(*args, "--json", code=code))


def flushed_ids_bytes(shard: Path) -> int:
    """The size of the shard's point-id files, written at each flush (13-21 bytes a point): the
    pages made durable so far. 0 before the first flush."""
    total = 0
    for f in shard.glob("segments/*/mutable_id_tracker.mappings"):
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


def stored_pages(collection: str = "pages") -> set[tuple[str, int]]:
    docs = cli_json("docs", "list", "--collection", collection)
    from retrieval.config import Settings
    from retrieval.store import PageStore

    store = PageStore.from_settings(Settings())
    try:
        return {
            (d["doc_id"], n)
            for d in docs
            for n in store.stored_page_numbers(collection, d["doc_id"])
        }
    finally:
        store.close()


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """Five made-up PDFs of 1-4 pages with different page sizes."""
    folder = tmp_path / "pdfs"
    folder.mkdir()
    sizes = [(595, 842), (612, 792), (842, 595), (300, 500), (1000, 700)]
    for i, size in enumerate(sizes):
        (folder / f"doc{i}.pdf").write_bytes(
            make_pdf([size] * (i % 4 + 1), rotations=[0] * (i % 4 + 1))
        )
    return folder


def test_good_and_bad_pdfs_together(env, tmp_path):
    good, bad = shared_pdfs("good"), shared_pdfs("bad")
    report_path = tmp_path / "report.json"
    out = cli_json("ingest", str(good), str(bad), "--report", str(report_path), code=1)
    summary = out["summary"]
    assert summary["pages_embedded"] == GOOD_PAGES + RENDERABLE_BAD_PAGES
    assert summary["failed"] == BAD_FILES
    failed = {d["name"]: d["error"] for d in out["documents"] if d["status"] == "failed"}
    assert failed["invalid-44-bytes.pdf"].endswith(
        "not a valid PDF (it has a PDF header but no objects)"
    )
    assert "password required" in failed["encrypted-libreoffice.pdf"]
    assert "cannot be parsed" in failed["bug1020226.pdf"]
    assert json.loads(report_path.read_text()) == out
    # Every good page is stored and searchable; bad files are listed as failed, with no pages.
    docs = cli_json("docs", "list")
    by_name = {d["name"]: d for d in docs}
    assert sum(d["page_count"] for d in docs if d["status"] == "indexed") == GOOD_PAGES + 2
    assert (
        by_name["R-intro.pdf"]["page_count"] == 113
        and by_name["R-intro.pdf"]["status"] == "indexed"
    )
    assert by_name["saslprep-r6.pdf"]["status"] == "failed"
    collections = cli_json("collections", "list")
    assert collections[0]["pages"] == GOOD_PAGES + RENDERABLE_BAD_PAGES
    # A second run embeds nothing: indexed files are skipped by content hash before rendering.
    again = cli_json("ingest", str(good), str(bad), code=1)["summary"]
    assert again["pages_embedded"] == 0 and again["skipped"] == 19 and again["failed"] == BAD_FILES


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_ingest_with_an_encoder_process_stores_what_in_process_ingest_stores(
    env, small_corpus, tmp_path, monkeypatch
):
    """COLQWEN_ENCODER_PROCESSES=on (auto turns it on for several GPUs): the model runs in a
    child process, and the stored pages score as those of an in-process run."""
    query = ["search", "a red square on white", "--mode", "exact", "--top-k", "20"]
    cli("ingest", str(small_corpus), "--quiet")
    threads = {(h["source"], h["page"]): h["score"] for h in cli_json(*query)["hits"]}
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "processes"))
    monkeypatch.setenv("COLQWEN_ENCODER_PROCESSES", "on")
    summary = cli_json("ingest", str(small_corpus))["summary"]
    assert summary["indexed"] == 5 and summary["pages_embedded"] == 11
    processes = {(h["source"], h["page"]): h["score"] for h in cli_json(*query)["hits"]}
    assert processes.keys() == threads.keys() and len(threads) == 11
    for key, score in threads.items():
        assert processes[key] == pytest.approx(score, abs=1e-3)


def test_search_json_scores_equal_the_exact_oracle(env, small_corpus, encoder):
    cli("ingest", str(small_corpus), "--quiet")
    out = cli_json("search", "a red square on white", "--mode", "exact", "--top-k", "20")
    hits = out["hits"]
    assert len(hits) == 1 + 2 + 3 + 4 + 1
    # Oracle: render each page ourselves, embed with the same model, brute-force MaxSim.
    from retrieval.encoder import Encoder

    model = Encoder.load(os.environ["COLQWEN_MODEL"], device="cpu", max_visual_tokens=BUDGET)
    [query] = model.embed_queries(["a red square on white"])
    options = RenderOptions(max_visual_tokens=BUDGET)
    for hit in hits:
        with open_document(small_corpus / hit["source"], options=options) as doc:
            [page] = model.embed_pages([doc.render(hit["page"] - 1).image])
        oracle = float((query @ page.multivector.T).max(axis=1).sum())
        assert hit["score"] == pytest.approx(oracle, abs=1e-2)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_shards_split_the_work_without_overlap(env, small_corpus, tmp_path, monkeypatch):
    cli("ingest", str(small_corpus), "--shard", "0/2", "--quiet")
    first = stored_pages()
    cli("ingest", str(small_corpus), "--shard", "1/2", "--quiet")
    both = stored_pages()
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "full"))
    cli("ingest", str(small_corpus), "--quiet")
    full = stored_pages()
    assert first and first != both
    assert both == full and len(full) == 11


def test_metadata_from_flags_and_sidecars(env, small_corpus):
    (small_corpus / "doc1.pdf.json").write_text(json.dumps({"team": "legal", "year": 2021}))
    cli("ingest", str(small_corpus), "--meta", "team=finance", "--meta", "year=2024", "--quiet")
    docs = {d["name"]: d for d in cli_json("docs", "list")}
    assert docs["doc1.pdf"]["metadata"] == {"team": "legal", "year": 2021}
    assert docs["doc0.pdf"]["metadata"] == {"team": "finance", "year": 2024}
    hits = cli_json("search", "x", "--filter", '{"metadata": {"team": "legal"}}', "--top-k", "50")[
        "hits"
    ]
    assert {h["source"] for h in hits} == {"doc1.pdf"}


def test_bad_sidecar_fails_only_its_file(env, small_corpus):
    (small_corpus / "doc2.json").write_text("{not json")
    out = cli_json("ingest", str(small_corpus), code=1)
    failed = [d for d in out["documents"] if d["status"] == "failed"]
    assert [d["name"] for d in failed] == ["doc2.pdf"] and "sidecar" in failed[0]["error"]
    assert out["summary"]["indexed"] == 4


def test_docs_show_and_delete(env, small_corpus):
    cli("ingest", str(small_corpus), "--quiet")
    doc = next(d for d in cli_json("docs", "list") if d["name"] == "doc3.pdf")
    shown = cli_json("docs", "show", doc["doc_id"][:10])
    assert shown["pages_stored"] == 4 and shown["status"] == "indexed"
    refused = CliRunner().invoke(app, ["docs", "delete", doc["doc_id"][:10]], input="n\n")
    assert refused.exit_code == 1 and "Delete doc3.pdf (4 pages)" in refused.output
    assert "doc3.pdf" in {d["name"] for d in cli_json("docs", "list")}  # asked, not deleted
    cli("docs", "delete", doc["doc_id"][:10], "--yes")
    assert "doc3.pdf" not in {d["name"] for d in cli_json("docs", "list")}
    hits = cli_json("search", "x", "--top-k", "50", "--mode", "exact")["hits"]
    assert "doc3.pdf" not in {h["source"] for h in hits} and len(hits) == 7
    result = CliRunner().invoke(app, ["docs", "show", "ffff"])
    assert result.exit_code == 1 and "no document id starts with 'ffff'" in result.stderr


def test_collections_create_list_drop(env, small_corpus):
    create = ["collections", "create", "papers", "--pooling", "rows,cols", "--dtype", "turbo16"]
    cli(*create, "--index", "year=integer")
    cli("ingest", str(small_corpus), "--collection", "papers", "--meta", "year=2020", "--quiet")
    [info] = cli_json("collections", "list")
    assert info["name"] == "papers" and info["pooling"] == ["rows", "cols"] and info["pages"] == 11
    assert info["original_dtype"] == "turbo16"
    hits = cli_json(
        "search", "x", "-c", "papers", "--filter", '{"metadata": {"year": {"gte": 2020}}}'
    )["hits"]
    assert len(hits) == 10
    cli("collections", "drop", "papers", "--yes")
    assert cli_json("collections", "list") == []
    result = CliRunner().invoke(app, ["search", "x", "-c", "papers"])
    assert result.exit_code == 1 and "collection 'papers' does not exist" in result.stderr


def test_collections_upgrade_gives_an_old_collection_the_fde_first_stage(
    env, small_corpus, monkeypatch
):
    monkeypatch.setenv("COLQWEN_FIRST_STAGE", "rows")  # as collections were made before FDEs
    cli("collections", "create", "old", "--pooling", "rows")
    cli("ingest", str(small_corpus), "--collection", "old", "--quiet")
    monkeypatch.delenv("COLQWEN_FIRST_STAGE")
    [info] = cli_json("collections", "list")
    assert info["first_stage"] == "rows"
    exact = cli_json("search", "x", "-c", "old", "--mode", "exact", "-k", "11")["hits"]
    output = cli("collections", "upgrade", "old")
    assert "upgraded collection old" in output and "11/11" in output  # the progress bar
    [info] = cli_json("collections", "list")
    assert info["first_stage"] == "fde" and info["pooling"] == ["clusters"] and info["pages"] == 11
    after = cli_json("search", "x", "-c", "old", "--mode", "exact", "-k", "11")["hits"]
    two_stage = cli_json("search", "x", "-c", "old", "-k", "11")["hits"]
    scores = {(h["doc_id"], h["page"]): h["score"] for h in exact}  # the tiny model ties pages
    for hits in (after, two_stage):
        assert {(h["doc_id"], h["page"]): h["score"] for h in hits} == pytest.approx(scores)
    assert "already has the current schema" in cli("collections", "upgrade", "old")


def test_collections_upgrade_gives_a_bucket_collection_the_clustered_middle_stage(
    env, small_corpus, monkeypatch
):
    """Collections made with SimHash buckets search at the depths those were tuned for until
    the upgrade recomputes their pooled vectors as clusters (no model): the same pages at the
    same scores, fewer of them reranked."""
    monkeypatch.setenv("COLQWEN_POOLING", "buckets")  # as collections were made before
    cli("ingest", str(small_corpus), "--collection", "old", "--quiet")
    monkeypatch.delenv("COLQWEN_POOLING")
    [info] = cli_json("collections", "list")
    assert info["pooling"] == ["buckets"]
    exact = cli_json("search", "x", "-c", "old", "--mode", "exact", "-k", "11")["hits"]
    assert "upgraded collection old" in cli("collections", "upgrade", "old")
    [info] = cli_json("collections", "list")
    assert info["pooling"] == ["clusters"] and info["pages"] == 11
    two_stage = cli_json("search", "x", "-c", "old", "-k", "11", "--prefetch", "11")["hits"]
    scores = {(h["doc_id"], h["page"]): h["score"] for h in exact}
    assert {(h["doc_id"], h["page"]): h["score"] for h in two_stage} == pytest.approx(scores)
    assert "already has the current schema" in cli("collections", "upgrade", "old")


def test_collections_upgrade_gives_a_collection_made_before_text_its_text(env, tmp_path):
    """A collection whose pages have no text (as before pages kept it) gets it from the kept
    originals: the text and hybrid modes then work, nothing is embedded again."""
    import dataclasses

    from retrieval.config import Settings
    from retrieval.store import PageStore

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf([(595, 842)] * 2, texts=["zebra stripes", "tax law"]))
    cli("collections", "create", "old")
    store = PageStore.from_settings(Settings())
    store.write_schema(dataclasses.replace(store.collection("old"), text=False))  # as before
    store.close()
    cli("ingest", str(folder), "--collection", "old", "--quiet")
    bad = CliRunner().invoke(app, ["search", "zebra", "-c", "old", "--mode", "text"])
    assert bad.exit_code == 1 and "before pages kept their text" in bad.output
    exact = cli_json("search", "zebra", "-c", "old", "--mode", "exact")["hits"]
    cli("collections", "upgrade", "old")
    [hit] = cli_json("search", "zebra", "-c", "old", "--mode", "text")["hits"]
    assert hit["page"] == 1 and hit["payload"]["text"] == "zebra stripes"
    after = cli_json("search", "zebra", "-c", "old", "--mode", "exact")["hits"]
    assert [(h["doc_id"], h["page"]) for h in after] == [(h["doc_id"], h["page"]) for h in exact]
    assert "already has the current schema" in cli("collections", "upgrade", "old")


def test_user_errors_are_one_line_not_tracebacks(env, tmp_path):
    for args, message in [
        (["ingest", str(tmp_path / "missing")], "no such file or directory"),
        (["ingest", str(tmp_path), "--shard", "2/2"], "bad shard"),
        (["search", "x", "--filter", "{oops"], "not valid JSON"),
        (["search", "x", "--filter", '{"colour": 1}'], "unknown filter key"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output
    for args in (["--pooling", "bogus"], ["--dtype", "int4"]):  # bad flag values: usage errors
        result = CliRunner().invoke(app, ["collections", "create", "c", *args])
        assert result.exit_code == 2 and "Invalid value" in result.stderr, result.output
        assert "Traceback" not in result.output


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(env, tmp_path, monkeypatch):
    good = shared_pdfs("good")
    command = [sys.executable, "-m", "app.cli", "ingest", str(good), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        # Past the first document (R-intro.pdf, 113 pages; pages are made durable about once
        # a second inside a document too), short of all 371: some documents are marked. The
        # id tracker takes 13-21 bytes a page (7,791 bytes for the 371): ~190-300 pages.
        if flushed_ids_bytes(env / "qdrant" / "pages") > 4000:
            time.sleep(0.2)  # a moment later: a few more documents, and wherever the run is then
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted = stored_pages()
    assert 0 < len(interrupted) < GOOD_PAGES
    # Whatever the moment of the kill: a document marked indexed has all its pages.
    stored = Counter(doc_id for doc_id, _ in interrupted)
    indexed = [d for d in cli_json("docs", "list") if d["status"] == "indexed"]
    assert indexed and all(stored[d["doc_id"]] == d["page_count"] for d in indexed)
    cli("ingest", str(good), "--quiet")
    resumed = stored_pages()
    docs = cli_json("docs", "list")
    assert all(d["status"] == "indexed" for d in docs) and len(docs) == 17
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "clean"))
    cli("ingest", str(good), "--quiet")
    assert resumed == stored_pages() and len(resumed) == GOOD_PAGES
    exact = cli_json("search", "manual", "--mode", "exact", "--top-k", "5")["hits"]
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(env))
    again = cli_json("search", "manual", "--mode", "exact", "--top-k", "5")["hits"]
    assert [(h["doc_id"], h["page"]) for h in again] == [(h["doc_id"], h["page"]) for h in exact]
    np.testing.assert_allclose([h["score"] for h in again], [h["score"] for h in exact], atol=1e-4)
