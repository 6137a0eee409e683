"""Every family sees exactly what we say it sees, with image settings other than the released
checkpoints': pages are rendered at a size the checkpoint's own processor leaves as it is (where
its settings allow one), the grid we record is the one the model makes, and page and query
vectors equal colpali-engine's single-item output whatever they are batched with.

The oracle is the processor itself (transformers' image processors, run on the rendered image:
its tile tokens, its ``image_grid_thw``, its pixels), never our mirror of its arithmetic."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from indexer.render import RenderOptions, open_document
from retrieval.config import Settings
from retrieval.encoder import Encoder
from retrieval.models import FAMILIES
from tests.documents import make_pdf
from tests.test_families import reference
from tests.tiny_families import write_checkpoint

# (family, the checkpoint's image settings, our visual-token budget)
CONFIGS = {
    "colqwen2 budget 16": ("colqwen2", {}, 16),
    "colqwen2 budget 2048": ("colqwen2", {}, 2048),
    "colqwen3 budget 40": ("colqwen3", {}, 40),
    "colpali 224 px": ("colpali", {"side_px": 224}, 768),
    "colgemma3 448 px, 64 tokens": ("colgemma3", {"side_px": 448, "tokens": 64}, 768),
    "colidefics3 1280/384": (
        "colidefics3",
        {"longest_edge": 1280, "tile_px": 384, "scale": 3},
        768,
    ),
    "colidefics3 1536/384": (
        "colidefics3",
        {"longest_edge": 1536, "tile_px": 384, "scale": 3},
        768,
    ),
    "colmodernvbert 900/256": (
        "colmodernvbert",
        {"longest_edge": 900, "tile_px": 256, "scale": 4},
        768,
    ),
}
PAGES = {"A4": (595.28, 841.89), "Letter": (612, 792), "A4 landscape": (841.89, 595.28)}
PAGES_PDF = make_pdf(list(PAGES.values()))
QUERIES = ["where is the total?", "a", "quarterly revenue by region, 2024"]


@cache
def loaded(config: str) -> tuple[Encoder, RenderOptions]:
    import tempfile

    name, geometry, budget = CONFIGS[config]
    path = write_checkpoint(name, Path(tempfile.mkdtemp(prefix="geometry-")), **geometry)
    settings = Settings(_env_file=None, model=str(path), max_visual_tokens=budget)
    encoder = Encoder.load(str(path), device="cpu", max_visual_tokens=budget, batch_size=4)
    return encoder, RenderOptions.from_settings(settings)


def processor_grid(encoder: Encoder, image, inputs) -> tuple[int, int]:
    """(rows, cols) of visual tokens the processor gives the model for ``image``: read from
    its own output (tile tokens, ``image_grid_thw``, the count of image tokens)."""
    processor, family = encoder.processor, encoder.family.name
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    if family in ("colidefics3", "colmodernvbert"):
        text = processor.tokenizer.decode(ids)
        tiles = [(int(r), int(c)) for r, c in re.findall(r"<row_(\d+)_col_(\d+)>", text)]
        rows, cols = (max(t[0] for t in tiles), max(t[1] for t in tiles)) if tiles else (1, 1)
        side = math.isqrt(processor.image_seq_len)
        return rows * side, cols * side
    if family.startswith("colqwen"):
        _, h, w = inputs["image_grid_thw"][0].tolist()
        merge = processor.image_processor.merge_size
        return h // merge, w // merge
    n = math.isqrt(sum(i == encoder.image_token_id for i in ids))
    return n, n


def assert_processor_leaves_it_as_it_is(encoder: Encoder, image, inputs) -> None:
    import torch

    ip = encoder.processor.image_processor
    family = encoder.family.name
    width, height = image.size
    if family.startswith("colqwen"):  # smart_resize would change a size it does not accept
        patch = ip.patch_size
        assert inputs["image_grid_thw"][0].tolist() == [1, height // patch, width // patch]
        assert height % patch == 0 and width % patch == 0
    elif family in ("colpali", "colgemma3"):
        assert (height, width) == (ip.size["height"], ip.size["width"])
    else:
        longest, tile = ip.size["longest_edge"], ip.max_image_size["longest_edge"]
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        from transformers.image_processing_utils import SizeDict

        first = ip.resize(tensor, SizeDict(longest_edge=longest))  # the processor's first resize
        assert first.shape == tensor.shape and torch.equal(first, tensor)
        if longest % tile == 0:  # then no resize at all: the first tile holds our pixels
            pixels = torch.from_numpy(np.asarray(image)[:tile, :tile]).permute(2, 0, 1).float()
            mean = torch.tensor(ip.image_mean).view(3, 1, 1)
            std = torch.tensor(ip.image_std).view(3, 1, 1)
            expected = (pixels * ip.rescale_factor - mean) / std
            torch.testing.assert_close(inputs["pixel_values"][0][0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", CONFIGS)
def test_pages_are_rendered_as_the_checkpoints_processor_sees_them(config):
    encoder, options = loaded(config)
    assert options.family == encoder.family  # one geometry: the processor's, bound once
    with open_document(PAGES_PDF, name="pages.pdf", options=options) as document:
        pages = [document.render(i) for i in range(document.info.page_count)]
    images = [page.image for page in pages]
    batched = encoder.embed_pages(images, batch_size=len(images))
    for shape, page, ours in zip(PAGES, pages, batched, strict=True):
        inputs = encoder.processor.process_images([page.image])
        assert_processor_leaves_it_as_it_is(encoder, page.image, inputs)
        seen = processor_grid(encoder, page.image, inputs)
        assert page.grid == seen, (shape, page.pixel_size)
        assert ours.grid == seen, shape
        [theirs] = reference(encoder, inputs)
        np.testing.assert_allclose(ours.multivector, theirs, atol=2e-5, err_msg=shape)
        [alone] = encoder.embed_pages([page.image], batch_size=1)
        np.testing.assert_allclose(alone.multivector, ours.multivector, atol=2e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_queries_do_not_depend_on_what_they_are_batched_with(config):
    encoder, _ = loaded(config)
    batched = encoder.embed_queries(QUERIES)
    for query, ours in zip(QUERIES, batched, strict=True):
        [theirs] = reference(encoder, encoder.processor.process_queries([query]))
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


TILINGS = [(2048, 512), (1536, 384), (1280, 384), (900, 256), (1000, 364), (512, 512), (700, 512)]
SHAPES = [(595, 842), (842, 595), (612, 1008), (300, 2000), (2000, 300), (500, 500), (511, 512)]


@pytest.mark.parametrize(("longest", "tile"), TILINGS)
def test_tiles_are_the_processors_for_every_tiling(longest, tile):
    """Our tile arithmetic against transformers' Idefics3 image processor run on the image we
    render: same tiles, and a size its resizes leave as it is (both, where the longest edge is
    whole tiles; the first, where it is not and no size could pass both)."""
    import torch
    from PIL import Image
    from transformers import Idefics3ImageProcessor
    from transformers.image_processing_utils import SizeDict

    ip = Idefics3ImageProcessor(
        size={"longest_edge": longest}, max_image_size={"longest_edge": tile}
    )
    tiles = FAMILIES["colidefics3"].with_params({"longest_edge": longest, "tile_px": tile})
    for shape in SHAPES:
        size = tiles.size_for(*shape, 768)
        out = ip(images=[Image.new("RGB", size)], return_row_col_info=True, return_tensors="pt")
        rows, cols = out["rows"][0][0], out["cols"][0][0]
        assert tiles.tiles_of(size) == (max(rows, 1), max(cols, 1)), shape
        assert out["pixel_values"].shape[1] == (rows * cols + 1 if rows else 1)
        tensor = torch.zeros((1, 3, size[1], size[0]))
        first = ip.resize(tensor, SizeDict(longest_edge=longest))
        assert tuple(first.shape) == tuple(tensor.shape), (shape, size)
        if longest % tile == 0:
            assert tiles.processed_size(size) == size
            assert size == (cols * tile or tile, rows * tile or tile)


@pytest.mark.parametrize("budget", [8, 16, 768, 5000])
def test_qwen_grids_are_the_processors_smart_resize_for_any_budget(budget):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    qwen = FAMILIES["colqwen2"].with_params({"max_tokens": budget})  # as the processor is set
    extreme = [(100, 19000), (19000, 100)] if budget >= 768 else []  # 190:1 needs 190 tokens
    for shape in [*SHAPES, *extreme]:
        width, height = qwen.size_for(*shape, budget)
        assert (height, width) == smart_resize(
            height, width, factor=28, min_pixels=4 * 784, max_pixels=budget * 784
        )
        rows, cols = qwen.grid_for(*shape, budget)
        assert (rows, cols) == (height // 28, width // 28) and 4 <= rows * cols <= budget
        others = [(width + 13, height - 7), (30, 5000), (4000, 4000)] if shape in SHAPES else []
        for size in others:
            expected = smart_resize(size[1], size[0], factor=28, max_pixels=budget * 784)
            assert qwen.processed_size(size) == expected[::-1]


def test_the_api_answers_concurrent_queries_as_it_answers_each_alone(tmp_path):
    """ColPali pads queries on the left, and a padded query gets other vectors: the API,
    which batches concurrent queries, must give each user the hits of their query alone."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from app.main import create_app
    from tests.server import serving, wait_job
    from tests.test_api import settings_for
    from tests.test_families import checkpoint

    settings = settings_for(checkpoint("colpali"), tmp_path / "data", query_batch_wait_ms=300.0)
    queries = ["a", "where is the total?", "quarterly revenue by region", "an invoice number"]
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=120) as client:
        pdf = make_pdf([(595, 842), (842, 595), (612, 792), (500, 700)])
        upload = client.post(
            "/v1/documents", files={"file": ("four.pdf", pdf, "application/pdf")}
        ).json()
        assert wait_job(client, upload["job_id"])["status"] == "done"

        def search(query: str) -> list[tuple[int, float]]:
            body = {"query": query, "mode": "exact", "top_k": 4}
            hits = client.post("/v1/search", json=body).json()["hits"]
            return [(h["page"], round(h["score"], 3)) for h in hits]

        alone = [search(q) for q in queries]
        with ThreadPoolExecutor(len(queries)) as pool:
            together = list(pool.map(search, queries))
        metrics = client.get("/metrics").text
    assert together == alone
    batched = re.search(r'colqwen_query_batch_size_bucket\{le="1.0"\} (\d+)', metrics)
    count = re.search(r"colqwen_query_batch_size_count (\d+)", metrics)
    assert batched and count and int(batched.group(1)) < int(count.group(1))  # some were batched
