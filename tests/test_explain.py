"""Why a page matched: similarity maps from the stored vectors, through the API and the CLI,
checked against an independent numpy computation on a page whose grid is not square."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from app.main import create_app
from indexer.render import RenderOptions, open_document
from retrieval.config import Settings
from tests.documents import make_pdf
from tests.server import serving, wait_job

BUDGET = 64
QUERY = "the red square in the corner"


@pytest.fixture
def served(tiny_model_dir, tmp_path, encoder):
    settings = Settings(
        _env_file=None,
        model=str(tiny_model_dir),
        device="cpu",
        max_visual_tokens=BUDGET,
        data_dir=tmp_path / "data",
        render_workers=1,
        qdrant_url=None,
    )
    app = create_app(settings)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        pdf = make_pdf([(842, 400), (595, 842)])  # a wide page first: a 5 x 11 grid
        job = client.post("/v1/documents", files={"file": ("wide.pdf", pdf, "application/pdf")})
        assert job.status_code == 202, job.text
        assert wait_job(client, job.json()["job_id"])["status"] == "done"
        yield client, pdf


def oracle_map(encoder, pdf: bytes, page: int, query: np.ndarray) -> np.ndarray:
    """The combined map by its definition, in numpy, from the page embedded afresh."""
    with open_document(pdf, options=RenderOptions(max_visual_tokens=BUDGET)) as doc:
        [emb] = encoder.embed_pages([doc.render(page - 1).image])
    sims = np.einsum("qd,rcd->qrc", query, emb.visual)  # each query token . each patch
    best = (query @ emb.multivector.T).max(axis=1)  # MaxSim's term of each query token
    shares = np.where(best[:, None, None] > 0, np.clip(sims, 0, None) / best[:, None, None], 0)
    combined = shares.sum(axis=0)
    return combined / combined.max()


def test_search_explains_each_hit_with_its_similarity_map(served, encoder):
    client, pdf = served
    body = {"query": QUERY, "mode": "exact", "explain": True, "top_k": 2}
    hits = client.post("/v1/search", json=body).json()["hits"]
    assert len(hits) == 2
    [query] = encoder.embed_queries([QUERY])
    for hit in hits:
        found = hit["explanation"]
        rows, cols = found["grid"]
        got = np.array(found["map"])
        assert got.shape == (rows, cols)
        expected = oracle_map(encoder, pdf, hit["page"], query)
        assert expected.shape == (rows, cols)
        np.testing.assert_allclose(got, expected, atol=2e-2)  # stored as float16
        if hit["page"] == 1:
            assert rows != cols and (rows, cols) == (5, 11)
        words = encoder.query_words(QUERY)
        assert words and max(words) < len(query)
        assert "".join(words.values()).replace(" ", "") == QUERY.replace(" ", "")
        assert found["tokens"] and {t["index"] for t in found["tokens"]} <= set(words)
        for token in found["tokens"]:
            assert token["text"] == words[token["index"]]
        best = max(found["regions"], key=lambda r: r["value"])
        assert best["value"] == pytest.approx(1.0) and got[best["row"], best["col"]] == 1.0
        png = client.get(found["heatmap_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.content))
        plain = Image.open(io.BytesIO(client.get(hit["image_url"]).content))
        assert image.size == plain.size and image.tobytes() != plain.tobytes()


def test_one_query_tokens_map_and_bad_tokens(served):
    client, _ = served
    doc_id = client.get("/v1/documents").json()["data"][0]["doc_id"]
    url = f"/v1/documents/{doc_id}/pages/1/heatmap"
    assert client.get(url, params={"query": QUERY, "token": 0}).status_code == 200
    bad = client.get(url, params={"query": QUERY, "token": 999})
    assert bad.status_code == 422 and "tokens" in bad.json()["detail"]
    assert client.get(url, params={"query": ""}).status_code == 422
    assert client.get(f"/v1/documents/{doc_id}/pages/9/heatmap?query=x").status_code == 404


def test_page_images_are_cached_with_an_etag(served):
    client, _ = served
    doc_id = client.get("/v1/documents").json()["data"][0]["doc_id"]
    url = f"/v1/documents/{doc_id}/pages/1/image?width=120"
    first = client.get(url)
    tag = first.headers["etag"]
    assert first.status_code == 200 and "private" in first.headers["cache-control"]
    again = client.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"/v1/documents/{doc_id}/pages/1/image?width=200")
    assert other.headers["etag"] != tag


def test_cli_explains_hits_and_draws_the_heatmap(tiny_model_dir, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("COLQWEN_MAX_VISUAL_TOKENS", str(BUDGET))
    monkeypatch.setenv("COLQWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLQWEN_DEVICE", "cpu")
    monkeypatch.setenv("COLQWEN_RENDER_WORKERS", "0")
    monkeypatch.delenv("COLQWEN_QDRANT_URL", raising=False)
    (tmp_path / "wide.pdf").write_bytes(make_pdf([(842, 400)]))

    def cli(*args):
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("ingest", str(tmp_path / "wide.pdf"), "--quiet")
    [hit] = json.loads(cli("search", QUERY, "--explain", "--json"))["hits"]
    found = hit["explanation"]
    assert found["grid"] == [5, 11] and len(found["regions"]) == 3 and found["tokens"]
    table = cli("search", QUERY, "--explain")
    assert "5 x 11" in table and "best regions" in table
    out = tmp_path / "map.png"
    cli("heatmap", hit["doc_id"][:10], "1", QUERY, "--out", str(out))
    assert Image.open(out).size == (11 * 28, 5 * 28)
    cli("heatmap", hit["doc_id"][:10], "1", QUERY, "--out", str(out), "--token", "0")
    result = CliRunner().invoke(
        app, ["heatmap", hit["doc_id"], "1", QUERY, "-o", str(out), "--token", "500"]
    )
    assert result.exit_code == 1 and "the query has" in result.output
