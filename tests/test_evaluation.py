"""Retrieval metrics against values computed by hand, the dataset format, and `colqwen eval`."""

from __future__ import annotations

import json
import math

import pytest

from retrieval.errors import InvalidInput
from retrieval.evaluation import Dataset, evaluate, mrr, ndcg, recall


def test_metrics_by_hand():
    rels = {"a": 1, "b": 1}  # two relevant pages
    ranked = ["x", "a", "y", "b", "z"]
    # DCG@5 = 1/log2(3) + 1/log2(5); ideal = 1/log2(2) + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg(ranked, rels, 5) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert ndcg(ranked, rels, 1) == 0.0
    assert recall(ranked, rels, 1) == 0.0
    assert recall(ranked, rels, 2) == 0.5
    assert recall(ranked, rels, 5) == 1.0
    assert mrr(ranked, rels) == 0.5
    assert mrr(["x", "y"], rels) == 0.0
    graded = {"a": 2, "b": 1}  # (2^2 - 1) at rank 2, (2^1 - 1) at rank 1 ideal ordering
    assert ndcg(["b", "a"], graded, 2) == pytest.approx(
        (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    )


def write_dataset(folder, qrels_lines):
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "alpha"}\n{"_id": "q2", "text": "beta"}\n'
    )
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"c{i}", "doc_id": "d", "page": i}) + "\n" for i in (1, 2, 3))
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels_lines)


def test_a_toy_dataset_scored_by_hand(tmp_path):
    write_dataset(tmp_path, "q1\tc2\t1\nq2\tc3\t1\nq2\tc1\t0\n")
    data = Dataset.load(tmp_path)
    assert data.qrels == {"q1": {"c2": 1}, "q2": {"c3": 1}}  # relevance 0 is not relevant
    rankings = {  # q1 finds its page first; q2 third
        ("alpha", "text"): [("d", 2), ("d", 1)],
        ("beta", "text"): [("d", 1), ("d", 2), ("d", 3)],
        ("alpha", "exact"): [("d", 2), ("d", 3)],
        ("beta", "exact"): [("d", 3), ("d", 2), ("d", 1)],
    }
    [text] = evaluate(data, lambda q, m, p: rankings[(q, m)], ["text"], fidelity_sample=2)
    assert text.metrics["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert text.metrics["recall@1"] == pytest.approx(0.5)
    assert text.metrics["recall@5"] == pytest.approx(1.0)
    assert text.metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    # Against exact: q1 shares 1 of exact's 2, q2 all 3 of 3.
    assert text.fidelity == pytest.approx((1 / 2 + 1) / 2)


def test_bad_datasets_are_refused_with_the_reason(tmp_path):
    with pytest.raises(InvalidInput, match=r"queries\.jsonl"):
        Dataset.load(tmp_path)
    write_dataset(tmp_path, "q9\tc1\t1\n")
    with pytest.raises(InvalidInput, match="q9"):
        Dataset.load(tmp_path)


def test_colqwen_eval_on_a_tiny_collection(tiny_model_dir, tmp_path, monkeypatch):
    """End to end: ingest two PDFs, label their pages, score text, two_stage and hybrid."""
    import hashlib

    from typer.testing import CliRunner

    from app.cli import app
    from tests.documents import make_pdf

    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("COLQWEN_MAX_VISUAL_TOKENS", "64")
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLQWEN_DEVICE", "cpu")
    monkeypatch.setenv("COLQWEN_RENDER_WORKERS", "0")
    monkeypatch.delenv("COLQWEN_QDRANT_URL", raising=False)
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make_pdf([(595, 842), (595, 842)], texts=["giraffes eat acacia", "tax law"]))
    doc = hashlib.sha256(pdf.read_bytes()).hexdigest()
    data = tmp_path / "set"
    (data / "qrels").mkdir(parents=True)
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "what do giraffes eat"}\n')
    (data / "corpus.jsonl").write_text(json.dumps({"_id": "c1", "doc_id": doc, "page": 1}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\n")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(pdf), "--quiet"]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--modes",
            "text,two_stage,hybrid",
            "--prefetch",
            "5,10",
            "--fidelity",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {(r["mode"], r["prefetch"]): r for r in json.loads(result.stdout)}
    assert set(rows) == {
        ("text", None),
        ("two_stage", 5),
        ("two_stage", 10),
        ("hybrid", 5),
        ("hybrid", 10),
    }
    assert rows[("text", None)]["mrr"] == 1.0  # the words are on page 1 alone
    assert rows[("two_stage", 10)]["fidelity_recall@10"] == 1.0  # two pages: exact's top 10
    bad = runner.invoke(app, ["eval", str(data), "--modes", "fuzzy"])
    assert bad.exit_code == 1 and "unknown" in bad.output
