"""The encoder against independent oracles computed from colpali-engine directly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.encoder import Encoder
from retrieval.errors import ModelLoadError
from retrieval.types import PageEmbedding

A4_INCHES = (8.27, 11.69)


def page_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A page-like image: white, with a few dark boxes and lines (deterministic)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
        x1, y1 = (
            x0 + int(rng.integers(1, width // 3 + 2)),
            y0 + int(rng.integers(1, height // 8 + 2)),
        )
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    return image


def reference_unpadded(encoder: Encoder, image: Image.Image) -> tuple[np.ndarray, dict]:
    """colpali-engine on a single image, padding removed by the attention mask."""
    batch = encoder.processor.process_images([image])
    with torch.no_grad():
        out = encoder.model(**batch)[0]
    keep = batch["attention_mask"][0].bool()
    return out[keep].float().numpy(), batch


@pytest.mark.parametrize("size", [(300, 200), (644, 896)])
def test_multivector_is_model_output_without_padding(encoder, size):
    # Batch the image with a bigger one so it is left-padded inside the batch.
    image = page_image(*size)
    page, _ = encoder.embed_pages([image, page_image(900, 700, seed=1)], batch_size=2)
    expected, _ = reference_unpadded(encoder, image)
    assert page.multivector.dtype == np.float32
    assert page.multivector.shape == expected.shape
    np.testing.assert_allclose(page.multivector, expected, atol=1e-5)


@pytest.mark.parametrize("size", [(300, 200), (644, 896), (1000, 400)])
def test_visual_tokens_are_the_raster_after_the_prompt_prefix(encoder, size):
    image = page_image(*size, seed=3)
    [page] = encoder.embed_pages([image])
    # Independent oracle: the grid from the processor's own get_n_patches (W, H) -> (cols, rows),
    # and the image span starting right after the tokenized prompt prefix.
    n_cols, n_rows = encoder.processor.get_n_patches(image.size, spatial_merge_size=2)
    assert page.grid == (n_rows, n_cols)
    prefix = encoder.processor.tokenizer("<|im_start|>user\n<|vision_start|>")["input_ids"]
    expected, _ = reference_unpadded(encoder, image)
    assert page.visual.shape == (n_rows, n_cols, 128)
    for r in range(n_rows):
        for c in range(n_cols):
            np.testing.assert_allclose(
                page.visual[r, c], expected[len(prefix) + r * n_cols + c], atol=1e-6
            )
    n_visual = n_rows * n_cols
    np.testing.assert_allclose(page.special[: len(prefix)], expected[: len(prefix)], atol=1e-6)
    np.testing.assert_allclose(
        page.special[len(prefix) :], expected[len(prefix) + n_visual :], atol=1e-6
    )


def test_pooled_rows_and_cols_are_hand_computed_unit_length_means(encoder):
    [page] = encoder.embed_pages([page_image(300, 200, seed=4)])
    rows, cols = page.grid
    assert (rows, cols) == (7, 11)  # 300x200 -> 308x196 px -> 22x14 patches -> 11x7 tokens
    for r in range(rows):
        mean = sum(page.visual[r, c] for c in range(cols)) / cols
        np.testing.assert_allclose(page.pooled_rows[r], mean / np.linalg.norm(mean), atol=1e-6)
    for c in range(cols):
        mean = sum(page.visual[r, c] for r in range(rows)) / rows
        np.testing.assert_allclose(page.pooled_cols[c], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_array_equal(page.pooled_rows[rows:], page.special)
    np.testing.assert_array_equal(page.pooled_cols[cols:], page.special)
    assert page.pooled_rows.dtype == page.pooled_cols.dtype == np.float32


@pytest.mark.parametrize("dpi", [100, 150, 200, 300])
def test_a4_page_stays_within_the_visual_token_budget(encoder, dpi):
    size = (round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi))
    [page] = encoder.embed_pages([page_image(*size)])
    rows, cols = page.grid
    assert rows * cols in (736, 759)
    assert (rows, cols) in ((32, 23), (33, 23))


def test_preprocess_equals_colpali_process_images(encoder):
    """What the model receives (preprocessed on the host, finished by ``to_device``) equals
    colpali-engine's ``process_images``, plus what the model would derive itself."""
    from transformers import vision_utils

    images = [page_image(300, 200), page_image(644, 924, seed=1), page_image(80, 900, seed=2)]
    batch = encoder.preprocess(images).inputs
    ours = encoder.family.to_device(encoder.processor, batch, "cpu")
    theirs = encoder.processor.process_images(images)
    derived = {"position_ids", "image_position_ids", "image_cu_seqlens", "image_max_seqlen"}
    derived |= {"image_packed_index", "image_packed_valid", "image_packed_rows"}  # unequal
    assert set(ours) == {*theirs, *derived}
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    positions, _ = encoder.model.get_rope_index(
        theirs["input_ids"],
        mm_token_type_ids=theirs["mm_token_type_ids"],
        image_grid_thw=theirs["image_grid_thw"],
        attention_mask=theirs["attention_mask"],
    )
    assert torch.equal(ours["position_ids"], positions)
    grid = theirs["image_grid_thw"]
    merge = encoder.model.visual.spatial_merge_size
    expected = vision_utils.get_vision_position_ids(grid, merge)
    assert torch.equal(ours["image_position_ids"], expected)
    lengths = (grid[:, 1] * grid[:, 2]).tolist()
    assert ours["image_cu_seqlens"].tolist() == [0, *np.cumsum(lengths)]
    assert ours["image_max_seqlen"] == max(lengths)
    # The packed attention's gather plan: slot (i, j) holds token start_i + j if j < length_i;
    # token t of sequence i, at offset j, lands in slot i * longest + j.
    longest, starts = max(lengths), [0, *np.cumsum(lengths)[:-1]]
    index, valid, rows = (ours[f"image_packed_{k}"] for k in ("index", "valid", "rows"))
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        assert valid[i].tolist() == [j < length for j in range(longest)]
        assert index[i, :length].tolist() == list(range(start, start + length))
    assert rows.tolist() == [i * longest + j for i, n in enumerate(lengths) for j in range(n)]


def test_the_vision_tower_takes_the_gather_plan_made_on_the_host(encoder, monkeypatch):
    """Pages of unequal sizes: the packed attention uses the plan preprocessing made (no plan
    made inside the model, where a compiled block would copy it from pageable memory); the
    same embeddings as a plan made there."""
    from retrieval.models import attention

    made, layout = [], attention._layout
    monkeypatch.setattr(attention, "_layout", lambda *a: made.append(a) or layout(*a))
    images = [page_image(300, 200), page_image(80, 900, seed=1)]
    batch = encoder.preprocess(images)
    assert "image_packed_rows" in batch.inputs
    given = [p.multivector for p in encoder.finish(encoder.launch(batch))]
    assert made == []
    for key in ("index", "valid", "rows"):
        del batch.inputs[f"image_packed_{key}"]
    inside = [p.multivector for p in encoder.finish(encoder.launch(batch))]
    assert made
    for a, b in zip(given, inside, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_batch_whose_tokens_do_not_match_its_grids_is_refused_before_the_model(encoder):
    from retrieval.errors import ColqwenError

    batch = encoder.preprocess([page_image(644, 924)]).inputs
    del batch["position_ids"]
    batch["image_grid_thw"] = batch["image_grid_thw"] * torch.tensor([1, 2, 1])
    with pytest.raises((ColqwenError, RuntimeError), match="image tokens"):
        encoder.family.complete(encoder.model, batch)


def test_batching_does_not_change_embeddings(encoder):
    images = [
        page_image(*s, seed=i)
        for i, s in enumerate([(300, 200), (644, 896), (500, 500), (80, 900)])
    ]
    one_by_one = [encoder.embed_pages([im], batch_size=1)[0] for im in images]
    batched = encoder.embed_pages(images, batch_size=4)
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.grid == b.grid
        np.testing.assert_allclose(a.multivector, b.multivector, atol=1e-5)


def test_queries_keep_augmentation_tokens_and_drop_padding(encoder):
    texts = ["a", "what is the revenue in 2021?"]
    short, long = encoder.embed_queries(texts)
    tok = encoder.processor.tokenizer
    # Each query is its text followed by 10 <|endoftext|> augmentation tokens, no padding.
    assert short.shape == (len(tok("a")["input_ids"]) + 10, 128)
    assert long.shape == (len(tok(texts[1])["input_ids"]) + 10, 128)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    # Same embedding alone as in a padded batch.
    [alone] = encoder.embed_queries(["a"])
    np.testing.assert_allclose(alone, short, atol=1e-5)


def test_maxsim_matches_colpali_score_multi_vector(encoder):
    pages = encoder.embed_pages([page_image(300, 200, seed=7), page_image(644, 896, seed=8)])
    queries = encoder.embed_queries(["invoice total", "a chart of growth"])
    for q in queries:
        for p in pages:
            ours = float((q @ p.multivector.T).max(axis=1).sum())
            # One document per call: score_multi_vector zero-pads across documents.
            ref = encoder.processor.score_multi_vector(
                [torch.from_numpy(q)], [torch.from_numpy(p.multivector)], device="cpu"
            )
            assert ours == pytest.approx(float(ref[0, 0]), abs=1e-4)


def test_adapter_checkpoint_loads_offline(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    from colpali_engine.models import ColQwen2
    from peft import PeftModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapted = Encoder.load(str(tiny_adapter_dir), device="cpu")
    image = page_image(300, 200, seed=9)
    [page] = adapted.embed_pages([image])
    # Oracle: the same adapter applied by PEFT directly on the base model.
    base = ColQwen2.from_pretrained(tiny_model_dir, dtype=torch.float32, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(tiny_adapter_dir)).eval()
    batch = adapted.processor.process_images([image])
    with torch.no_grad():
        expected = peft_model(**batch)[0].numpy()
    np.testing.assert_allclose(page.multivector, expected, atol=1e-5)
    plain = Encoder.load(str(tiny_model_dir), device="cpu")
    assert not np.allclose(plain.embed_pages([image])[0].multivector, page.multivector, atol=1e-3)


def test_checkpoint_allowing_huge_images_is_capped(tiny_model_dir, tmp_path):
    # A checkpoint whose preprocessor allows 12,845,056 pixels, like the real one.
    ckpt = tmp_path / "big-preprocessor"
    shutil.copytree(tiny_model_dir, ckpt)
    config_path = ckpt / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"]["longest_edge"] = 12845056
    config_path.write_text(json.dumps(config))
    encoder = Encoder.load(str(ckpt), device="cpu", max_visual_tokens=768)
    [page] = encoder.embed_pages([page_image(2480, 3508)])  # A4 at 300 DPI
    assert page.grid[0] * page.grid[1] <= 768


def test_missing_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        Encoder.load(str(missing), device="cpu")


def test_directory_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model checkpoint"):
        Encoder.load(str(tmp_path), device="cpu")


def test_adapter_with_missing_base_is_a_clear_error(tiny_adapter_dir, tmp_path):
    broken = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, broken)
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="gone"):
        Encoder.load(str(broken), device="cpu")


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        Encoder.load("no-such-org/no-such-model", device="cpu")


def test_out_of_memory_halves_the_batch_and_remembers(encoder, monkeypatch):
    images = [page_image(300, 200, seed=i) for i in range(5)]
    expected = encoder.embed_pages(images, batch_size=1)
    real_forward = encoder.forward
    seen = []

    def forward_that_fits_two(batch):
        n = batch.inputs["input_ids"].shape[0]
        seen.append(n)
        if n > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(batch)

    monkeypatch.setattr(encoder, "forward", forward_that_fits_two)
    got = encoder.embed_pages(images, batch_size=8)
    assert seen[:3] == [5, 2, 2]
    assert encoder.fitting_batch_size == 2
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a.multivector, b.multivector, atol=1e-5)
    seen.clear()
    encoder.embed_pages(images, batch_size=8)  # the learned size is kept
    assert max(seen) == 2
    encoder.fitting_batch_size = None


def test_a_launch_out_of_memory_falls_back_to_smaller_batches(encoder, monkeypatch):
    """What the ingestion pipeline (and each encoder process) calls: ``launch_fitting`` then
    ``finish`` give the batch's pages even when the whole batch does not fit."""
    images = [page_image(300, 200, seed=i) for i in range(5)]
    expected = encoder.embed_pages(images, batch_size=1)
    real_forward = encoder.forward

    def forward_that_fits_two(batch):
        if batch.inputs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(batch)

    monkeypatch.setattr(encoder, "forward", forward_that_fits_two)
    try:
        got = encoder.finish(encoder.launch_fitting(encoder.preprocess(images), images))
    finally:
        encoder.fitting_batch_size = None
    assert len(got) == 5
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a.multivector, b.multivector, atol=1e-5)


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_compiled_graphs_still_run_after_torch_cpu_threads_change(tiny_model_dir):
    """Dynamo guards its graphs on torch's CPU thread count. Ingestion (or any caller) that
    changes the count after the warm-up still runs the warm-up's graphs: not a retrace, and
    not eager (the H100 pipeline once ran at 41 instead of 60 pages/s so). The caller's count
    is restored after each batch. Nor does a single page, a shape of its own, retrace."""
    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=64, batch_size=4)
    sizes = encoder.family.warm_up_sizes(64)
    pages = [Image.effect_noise(sizes[0], 64).convert("RGB")] * 4
    other = Image.effect_noise(sizes[-1], 64).convert("RGB")
    legal = encoder.family.size_for(612, 1008, 64)
    longer = Image.effect_noise(legal, 64).convert("RGB")  # more tokens than an A4 page
    mixes = [[other, *pages[:2]], [longer, *pages[:2]], [longer, pages[0]]]
    expected = [p.multivector for p in encoder.embed_pages(pages)]
    expected_mixed = [[p.multivector for p in encoder.embed_pages(m)] for m in mixes]
    threads = torch.get_num_threads()
    torch._dynamo.utils.counters.clear()
    encoder.compile(backend="eager")
    try:
        encoder.warm_up()
        # Each block traced whole (transformers' output-capture hooks are off): no piece of a
        # block is compiled apart, and one graph per kind of block and input layout.
        assert not torch._dynamo.utils.counters["graph_break"]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 8
        torch.set_num_threads(threads + 1)
        with torch.compiler.set_stance("fail_on_recompile"):
            full = encoder.embed_pages(pages)  # a warmed full batch
            partial = encoder.embed_pages(pages[:3])  # a partial one
            single = encoder.embed_pages(pages[:1])  # dynamo's own graph for sizes of 1
            mixed = [encoder.embed_pages(m) for m in mixes]  # two grids, (un)equal lengths
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
    for got in (full, partial, single):
        for page, want in zip(got, expected, strict=False):
            np.testing.assert_allclose(page.multivector, want, atol=1e-5)
    for got, wanted in zip(mixed, expected_mixed, strict=True):
        for page, want in zip(got, wanted, strict=True):
            np.testing.assert_allclose(page.multivector, want, atol=1e-5)


@pytest.mark.gpu
def test_a_gpu_batch_is_preprocessed_into_pinned_memory(tiny_model_dir):
    """Every host tensor bound for the GPU is page-locked: a copy from pageable memory would
    wait for the device's queued work before it starts."""
    encoder = Encoder.load(str(tiny_model_dir), device="cuda", max_visual_tokens=64)
    batch = encoder.preprocess([page_image(300, 200), page_image(200, 300, seed=1)])
    host = encoder.family.host_inputs()
    bound = {k: v for k, v in batch.inputs.items() if isinstance(v, torch.Tensor)}
    bound = {k: v for k, v in bound.items() if k not in host}
    assert bound and all(v.is_pinned() for v in bound.values()), {
        k: v.is_pinned() for k, v in bound.items()
    }
    assert all(stack.is_pinned() for _, stack in batch.inputs["pixel_groups"])


def test_a_page_embedding_crosses_processes_at_half_the_bytes_and_whole(encoder, tmp_path):
    """Encoder processes send pages back pickled: the visual grid and the special tokens are
    rebuilt from the token vectors, exactly, rather than sent twice."""
    import pickle

    [page] = encoder.embed_pages([Image.new("RGB", (448, 644), "white")])
    back = pickle.loads(pickle.dumps(page))
    for name in ("multivector", "visual", "special"):
        assert np.array_equal(getattr(back, name), getattr(page, name)), name
    assert (back.grid, back.visual_runs) == (page.grid, page.visual_runs)
    whole = sum(getattr(page, n).nbytes for n in ("multivector", "visual", "special"))
    assert len(pickle.dumps(page)) < 0.6 * whole
    # A layout that is not one run of the tokens (a tiled family's) pickles whole.
    shuffled = PageEmbedding(
        page.multivector, page.grid, page.visual[::-1].copy(), page.special, page.visual_runs
    )
    back = pickle.loads(pickle.dumps(shuffled))
    assert np.array_equal(back.visual, shuffled.visual)
    assert np.array_equal(back.special, shuffled.special)
