"""Every model family, on a tiny checkpoint of its real classes: our embeddings equal
colpali-engine's own processor + model output, token for token, the visual tokens sit where
colpali-engine's own geometry says, and a PDF goes in and comes back out of search exactly."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from indexer.pipeline import IngestPipeline
from indexer.render import RenderOptions, open_document
from indexer.sources import discover
from retrieval.encoder import Encoder
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from tests.documents import make_pdf
from tests.tiny_families import BUILDERS, write_checkpoint

FAMILIES = list(BUILDERS)
PAGES = {  # points
    "A4": (595, 842),
    "Letter": (612, 792),
    "landscape": (842, 595),
    "very wide": (2000, 300),
    "very tall": (300, 2000),
}
QUERIES = ["where is the total?", "a"]


@cache
def checkpoint(name: str) -> Path:
    import tempfile

    return write_checkpoint(name, Path(tempfile.mkdtemp(prefix=f"tiny-{name}-")))


@cache
def encoder(name: str) -> Encoder:
    return Encoder.load(str(checkpoint(name)), device="cpu", batch_size=8)


def pages_for(enc: Encoder) -> list:
    """A noisy image of each page shape, at the size the family renders it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for w, h in PAGES.values():
        width, height = enc.family.size_for(w, h, enc.max_visual_tokens)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


@contextmanager
def transformers_attention(model):
    """The model as transformers configures it: our packed vision attention switched off."""
    from retrieval.models import attention

    config = getattr(getattr(model, "visual", None), "config", None)
    packed = getattr(config, "_attn_implementation", None) == attention.NAME
    if packed:
        config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        if packed:
            config._attn_implementation = attention.NAME


def reference(enc: Encoder, inputs) -> list[np.ndarray]:
    """colpali-engine's own output for processed inputs: each row without its padding."""
    import torch

    with torch.inference_mode(), transformers_attention(enc.model):
        out = enc.model(**inputs).float().numpy()
    mask = inputs["attention_mask"].bool().numpy()
    return [row[m] for row, m in zip(out, mask, strict=True)]


def reference_grid(enc: Encoder, image, inputs, tokens: np.ndarray) -> np.ndarray:
    """The page's visual tokens as a (rows, cols, dim) grid by colpali-engine's geometry:
    its ``get_n_patches``, and for tiled models its own ``rearrange_image_embeddings``."""
    import torch

    processor, family = enc.processor, enc.family.name
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    is_image = (ids == enc.model.config.image_token_id).numpy()
    if family in ("colidefics3", "colmodernvbert"):
        n_x, n_y = processor.get_n_patches((image.height, image.width), patch_size=64)
        local = processor.get_local_image_mask(inputs)[0][inputs["attention_mask"][0].bool()]
        grid = processor.rearrange_image_embeddings(torch.from_numpy(tokens), local, (n_x, n_y))
        return grid.permute(1, 0, 2).numpy()  # colpali-engine gives (x, y); ours is (rows, cols)
    if family == "colpali":
        n_x, n_y = processor.get_n_patches(image.size, patch_size=14)
    elif family == "colgemma3":
        n_x = n_y = 16  # Gemma 3 pools its 64 x 64 patches 4 x 4: mm_tokens_per_image = 256
        assert enc.model.config.mm_tokens_per_image == 256
    else:
        n_x, n_y = processor.get_n_patches(image.size, spatial_merge_size=2)
    return tokens[is_image].reshape(n_y, n_x, -1)


@pytest.mark.parametrize("name", FAMILIES)
def test_pages_equal_colpali_engine_in_a_batch_and_one_by_one(name):
    enc = encoder(name)
    images = pages_for(enc)
    batched = enc.embed_pages(images, batch_size=len(images))
    single = [enc.embed_pages([image], batch_size=1)[0] for image in images]
    for shape, image, ours, alone in zip(PAGES, images, batched, single, strict=True):
        inputs = enc.processor.process_images([image])
        [theirs] = reference(enc, inputs)
        np.testing.assert_allclose(ours.multivector, theirs, atol=2e-5, err_msg=shape)
        np.testing.assert_allclose(alone.multivector, theirs, atol=2e-5, err_msg=shape)
        grid = reference_grid(enc, image, inputs, theirs)
        assert ours.grid == grid.shape[:2], shape
        np.testing.assert_allclose(ours.visual, grid, atol=2e-5, err_msg=shape)
        # Every token is kept once: the grid's, then the rest (prompt, a global view) beside it.
        assert ours.grid[0] * ours.grid[1] + len(ours.special) == len(theirs)


@pytest.mark.parametrize("name", FAMILIES)
def test_queries_equal_colpali_engine_alone_whatever_they_are_batched_with(name):
    """colpali-engine pads a batch of queries of unequal lengths, and a left-padded model
    (ColPali) then gives a query other vectors than it has alone: ours are its own."""
    enc = encoder(name)
    batched = enc.embed_queries(QUERIES)
    for query, ours in zip(QUERIES, batched, strict=True):
        [theirs] = reference(enc, enc.processor.process_queries([query]))
        assert ours.shape == theirs.shape and ours.shape[1] == enc.dim
        np.testing.assert_allclose(ours, theirs, atol=2e-5)
        [alone] = enc.embed_queries([query])
        np.testing.assert_allclose(ours, alone, atol=2e-5)
    words = enc.query_words(QUERIES[0])  # the query's own tokens, in order
    assert "".join(words.values()).replace(" ", "") == QUERIES[0].replace(" ", "")


@pytest.mark.parametrize("name", FAMILIES)
def test_row_and_column_pooling_on_the_family_grid(name):
    """Pooled vectors are the unit-length means of the grid's rows and columns, computed here
    by hand from the tokens in the model's own order."""
    enc = encoder(name)
    image = pages_for(enc)[0]  # A4
    [page] = enc.embed_pages([image])
    rows, cols = page.grid
    expected = {
        "colpali": (32, 32),
        "colgemma3": (16, 16),
        "colidefics3": (32, 24),  # 4 x 3 tiles of 8 x 8
        "colmodernvbert": (32, 24),
    }.get(name, (33, 23))  # the Qwen family: the largest grid of A4 shape within 768
    assert (rows, cols) == expected
    token = page.visual.reshape(rows * cols, -1)
    row_means = np.stack([token[r * cols : (r + 1) * cols].mean(0) for r in range(rows)])
    col_means = np.stack([token[c::cols].mean(0) for c in range(cols)])
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(page.pooled_rows[:rows], unit(row_means), atol=1e-5)
    np.testing.assert_allclose(page.pooled_cols[:cols], unit(col_means), atol=1e-5)
    np.testing.assert_allclose(page.pooled_rows[rows:], page.special)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_pdf_in_and_out_of_search_exactly(name, tmp_path):
    enc = encoder(name)
    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf([(595, 842), (842, 595)]))
    (folder / "b.pdf").write_bytes(make_pdf([(612, 792)]))
    store = PageStore(EdgeBackend(tmp_path / "data"))
    store.create_collection(
        "c", model=enc.model_id, max_visual_tokens=enc.max_visual_tokens, dim=enc.dim, family=name
    )
    report = IngestPipeline(enc, store, "c", render_workers=1, batch_size=2).run(discover([folder]))
    assert report.ok and report.pages_embedded == 3
    [query] = enc.embed_queries(["the red square"])
    hits = store.search("c", query, top_k=10, mode="exact")
    # Oracle: render each page ourselves at the family's size, embed it, brute-force MaxSim.
    options = RenderOptions(max_visual_tokens=enc.max_visual_tokens, family=enc.family)
    oracle = {}
    for pdf in sorted(folder.iterdir()):
        with open_document(pdf, options=options) as doc:
            for i in range(doc.info.page_count):
                [page] = enc.embed_pages([doc.render(i).image])
                oracle[(pdf.name, i + 1)] = float((query @ page.multivector.T).max(1).sum())
    assert len(hits) == 3
    for hit in hits:
        assert hit.score == pytest.approx(oracle[(hit.source, hit.page)], abs=2e-2)
    ranked = [oracle[(h.source, h.page)] for h in hits]  # in the oracle's order, up to ties
    assert all(a >= b - 2e-2 for a, b in itertools.pairwise(ranked))
    store.close()


def test_one_service_searches_collections_of_several_models(tiny_model_dir, tmp_path):
    """Each collection is searched with its own model, loaded on first use; at most
    ``max_loaded_models`` stay loaded (the configured one always does)."""
    import httpx

    from app.main import create_app
    from retrieval.config import Settings
    from tests.server import serving

    data = tmp_path / "data"
    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf([(595, 842), (842, 595)]))
    store = PageStore(EdgeBackend(data / "qdrant"))
    for name in ("colqwen3", "colpali"):
        enc = encoder(name)
        store.create_collection(
            name, model=enc.model_id, max_visual_tokens=768, dim=enc.dim, family=name
        )
        assert IngestPipeline(enc, store, name, render_workers=1).run(discover([folder])).ok
    store.close()
    settings = Settings(
        _env_file=None,
        model=str(tiny_model_dir),
        device="cpu",
        data_dir=data,
        max_loaded_models=2,
        qdrant_url=None,
    )
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as api:
        for name in ("colqwen3", "colpali", "colqwen3"):
            body = {"query": "the red square", "collection": name, "mode": "exact"}
            response = api.post("/v1/search", json=body)
            assert response.status_code == 200, response.text
            [query] = encoder(name).embed_queries(["the red square"])
            options = RenderOptions(max_visual_tokens=768, family=encoder(name).family)
            with open_document(folder / "a.pdf", options=options) as doc:
                for hit in response.json()["hits"]:
                    [page] = encoder(name).embed_pages([doc.render(hit["page"] - 1).image])
                    oracle = float((query @ page.multivector.T).max(1).sum())
                    assert hit["score"] == pytest.approx(oracle, abs=2e-2)
            loaded = api.get("/readyz").json()["models_loaded"]
            assert loaded == [str(tiny_model_dir), str(checkpoint(name))]  # the other went
        # Ingestion uses the configured model: an upload into another model's collection is
        # refused at once, not failed later by its job.
        files = {"file": ("a.pdf", (folder / "a.pdf").read_bytes(), "application/pdf")}
        refused = api.post("/v1/documents", files=files, data={"collection": "colpali"})
        assert refused.status_code == 409 and "was built with" in refused.json()["detail"]


def test_colqwen_models_lists_every_family_with_its_a4_geometry():
    import json

    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(app, ["models", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["family"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {*FAMILIES, "colqwen2_5_omni"}
    assert not rows["colqwen2_5_omni"]["available"]
    for name in FAMILIES:  # what the tiny checkpoint of each family really makes of an A4 page
        enc = encoder(name)
        [page] = enc.embed_pages([pages_for(enc)[0]])
        assert rows[name]["a4_visual_tokens"] == page.grid[0] * page.grid[1], name
        assert rows[name]["available"] and rows[name]["dim"] in (128, 320)


def test_packed_vision_attention_equals_one_call_per_sequence():
    """The packed attention the Qwen vision towers run on (one SDPA call a block) against
    transformers' own loop of one call per image or window, for equal and unequal lengths."""
    import torch
    import torch.nn.functional as F

    from retrieval.models.attention import packed_sdpa

    torch.manual_seed(0)
    for lengths in ([16, 16, 16], [5, 16, 9, 1]):
        cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
        q, k, v = (torch.randn(1, 2, sum(lengths), 8) for _ in range(3))
        ours, _ = packed_sdpa(None, q, k, v, cu_seq_lens_q=cu, max_length_q=max(lengths))
        loop = torch.cat(
            [
                F.scaled_dot_product_attention(*(t[:, :, a:b] for t in (q, k, v)))
                for a, b in itertools.pairwise(cu.tolist())
            ],
            dim=2,
        ).transpose(1, 2)
        torch.testing.assert_close(ours, loop, atol=1e-6, rtol=1e-5)


def test_qwen_vision_towers_run_the_packed_attention():
    from retrieval.models import attention

    for name in ("colqwen2", "colqwen2_5", "colqwen3", "colqwen3_5"):
        assert encoder(name).model.visual.config._attn_implementation == attention.NAME


@pytest.mark.parametrize("name", ["colqwen2", "colqwen2_5", "colqwen3", "colqwen3_5"])
def test_qwen_patch_embeddings_run_as_a_matmul_equal_to_the_convolution(name):
    """The vision tower's patch embedding (a convolution of one patch per row) runs as a
    matmul; the convolution itself, on the same rows, is the oracle (Qwen3's has a bias)."""
    import torch

    embed = encoder(name).model.visual.patch_embed
    conv = embed.proj
    assert type(embed).forward is not embed.forward.__func__  # replaced on this model
    torch.manual_seed(0)
    rows = torch.randn(37, conv.in_channels * math.prod(conv.kernel_size))
    with torch.no_grad():
        ours = embed(rows)
        oracle = conv(rows.view(-1, conv.in_channels, *conv.kernel_size)).view(
            -1, conv.out_channels
        )
    torch.testing.assert_close(ours, oracle, atol=1e-5, rtol=1e-5)
