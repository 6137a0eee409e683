"""A GPU worker that starts in seconds (issue 34), tested on the CPU with the tiny model: a
device starts eager and hands over to a compiled process; a small run is not compiled; the
compiled kernels are kept for the next process; the blocks trace without breaking."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.config import Settings
from retrieval.encoder import Encoder
from tests.documents import make_pdf

BUDGET = 64


def _load(model_dir: str, compiled: bool = False, fail: bool = False, delay_s: float = 0.0):
    """An encoder process's factory: the tiny model, compiled with dynamo's ``eager`` backend
    (the same graphs and guards as inductor's, no code generated: seconds on a CPU)."""
    if delay_s:
        time.sleep(delay_s)
    if fail:
        raise RuntimeError("no compiler here")
    encoder = Encoder.load(model_dir, device="cpu", max_visual_tokens=BUDGET, batch_size=2)
    if compiled:
        encoder.compile(backend="eager")
    return encoder


def _pages() -> list[Image.Image]:
    """Two pages of fixed noise (the same each call)."""
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (308, 224, 3), dtype=np.uint8)) for _ in "ab"]


def test_the_blocks_run_without_transformers_output_capture(tiny_model_dir):
    """The hooks that broke every compiled block into pieces are off, and the pages are what
    colpali-engine's model makes with them on (the model loaded apart, through its own class
    and processor: an independent oracle)."""
    import torch
    from colpali_engine.models import ColQwen2, ColQwen2Processor

    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    hooks = [h for m in encoder.model.modules() for h in m._forward_hooks.values()]
    assert not [h for h in hooks if getattr(h, "__name__", "") == "output_capturing_hook"]
    images = _pages()
    ours = encoder.embed_pages(images)
    model = ColQwen2.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    processor = ColQwen2Processor.from_pretrained(tiny_model_dir, max_num_visual_tokens=BUDGET)
    with torch.inference_mode():
        batch = processor.process_images(images)
        theirs = model(**batch)
    captured = [h for m in model.modules() for h in m._forward_hooks.values()]
    assert captured  # colpali-engine's own model ran with them
    for page, row, mask in zip(ours, theirs, batch["attention_mask"].bool(), strict=True):
        np.testing.assert_allclose(page.multivector, row[mask].numpy(), atol=1e-5)


def test_the_hosts_model_is_its_structure_alone(tiny_model_dir, capsys):
    """A host that drives encoder processes gets the checkpoint's structure without reading
    a weight (PyTorch's meta device), with what the pipeline asks of a model the same as the
    loaded model's, and no "Loading weights" bar on the user's terminal."""
    import transformers

    transformers.utils.logging.enable_progress_bar()  # as a fresh process has it
    structure = Encoder.structure(str(tiny_model_dir), max_visual_tokens=BUDGET, batch_size=2)
    assert "Loading weights" not in capsys.readouterr().err
    assert all(p.is_meta for p in structure.model.parameters())
    loaded = _load(str(tiny_model_dir))
    assert structure.identity == loaded.identity and structure.batch_size == 2
    assert structure.family.name == loaded.family.name
    a4 = structure.family.size_for(595, 842, BUDGET)
    assert a4 == loaded.family.size_for(595, 842, BUDGET)
    assert structure.family.grid_for(595, 842, BUDGET) == loaded.family.grid_for(595, 842, BUDGET)


def test_a_small_run_is_not_compiled(tmp_path, monkeypatch):
    """``colqwen ingest`` of fewer pages than compile_min_pages runs the eager model on a GPU;
    ``compile=on`` and larger runs still compile; on a CPU (auto: no compile) nothing
    changes."""
    import retrieval.encoder
    from indexer.ingest import for_run
    from indexer.sources import count_pages, discover

    for i, n in enumerate([3, 5, 4]):
        (tmp_path / f"d{i}.pdf").write_bytes(make_pdf([(595, 842)] * n))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7 nothing else")
    sources = discover([tmp_path])
    assert count_pages(sources, enough=1000) == 3 + 5 + 4 + 1  # what cannot be read: 1
    assert count_pages(sources, enough=1000, cap=4) == 3 + 4 + 4 + 1
    assert count_pages(sources, enough=5) == 1 + 3 + 5  # sorted by name; stops once it knows

    on_cpu, note = for_run(Settings(device="cpu", compile_min_pages=100), sources)
    assert on_cpu.compile == "auto" and note is None
    monkeypatch.setattr(retrieval.encoder, "resolve_devices", lambda device: ["cuda:0"])
    small, note = for_run(Settings(compile_min_pages=100), sources)
    assert small.compile == "off" and "13 pages" in note and "COMPILE_MIN_PAGES" in note
    large, note = for_run(Settings(compile_min_pages=10), sources)
    assert large.compile == "auto" and note is None
    forced, note = for_run(Settings(compile="on", compile_min_pages=100), sources)
    assert forced.compile == "on" and note is None


def test_compile_cache_files_are_named_by_what_the_kernels_depend_on(tiny_model_dir, tmp_path):
    from retrieval import compile_cache

    encoder = _load(str(tiny_model_dir), compiled=True)
    same = _load(str(tiny_model_dir), compiled=True)
    key = compile_cache.artefact_key(encoder)
    assert key == compile_cache.artefact_key(same) and key.startswith("colqwen2-")
    same.batch_size = 4  # the warm-up's shapes change
    assert compile_cache.artefact_key(same) != key
    tuned = _load(str(tiny_model_dir))
    tuned.compile(backend="eager", tune=True)
    assert compile_cache.artefact_key(tuned) != key
    # A file that is not artefacts costs a compile, not the process; nothing written by a
    # backend that generates no code.
    (tmp_path / f"{key}.bin").write_bytes(b"not artefacts")
    warmed = compile_cache.warm_up(encoder, tmp_path)
    assert not warmed.loaded and warmed.seconds > 0
    uncompiled = _load(str(tiny_model_dir))
    plain = compile_cache.warm_up(uncompiled, tmp_path / "none")
    assert not plain.loaded and not plain.saved and not (tmp_path / "none").exists()


@pytest.mark.slow  # dynamo traces the blocks: seconds
def test_a_successor_compiles_the_common_shapes_and_runs_the_rare_ones_eager(tiny_model_dir):
    """``warm_up(every_shape=False)`` (what a process taking over from an eager one runs)
    compiles only what full and partial batches of one grid need; any other batch size or page
    size of one grid runs those graphs, and the rare shapes (a single page, pages of mixed
    sizes) run eager, without a compile on the serving path: the same pages either way."""
    import torch

    encoder = _load(str(tiny_model_dir))
    sizes = encoder.family.warm_up_sizes(BUDGET)
    a4 = [Image.effect_noise(sizes[0], 64).convert("RGB")] * 2
    letter = [Image.effect_noise(sizes[1], 64).convert("RGB")] * 2
    legal = Image.effect_noise(encoder.family.size_for(612, 1008, BUDGET), 64).convert("RGB")
    batches = [a4, letter, a4[:1], [a4[0], legal]]
    expected = [[p.multivector for p in encoder.embed_pages(b)] for b in batches]
    torch._dynamo.utils.counters.clear()
    encoder.compile(backend="eager")
    try:
        encoder.warm_up(every_shape=False)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs <= 2  # a vision block's and a decoder layer's graph (6 for every shape)
        with torch.compiler.set_stance("fail_on_recompile"):
            common = [encoder.embed_pages(b) for b in batches[:2]]  # compiled: no new trace
        rare = [encoder.embed_pages(b) for b in batches[2:]]  # eager_on_recompile, as set
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
    for got, wanted in zip(common + rare, expected, strict=True):
        for page, want in zip(got, wanted, strict=True):
            np.testing.assert_allclose(page.multivector, want, atol=1e-5)


@pytest.mark.slow  # encoder processes started cold: seconds each
def test_a_device_starts_eager_and_hands_over_to_its_compiled_process(tiny_model_dir):
    """Pages come from the eager process at once; once the compiled one is warmed up, from it;
    the eager one then stops. The pages are the in-process encoder's throughout."""
    from retrieval.encoder_process import EncoderProcess
    from retrieval.handover import Handover

    model = str(tiny_model_dir)
    oracle = [p.multivector for p in _load(model).embed_pages(_pages())]
    eager = EncoderProcess(functools.partial(_load, model), "cpu", warm_up=False, wait=False)
    compiled = EncoderProcess(functools.partial(_load, model, compiled=True), "cpu", wait=False)
    said: list[str] = []
    device = Handover(eager, compiled, said.append)
    try:
        before = device.embed_pages(_pages())
        assert not device.compiled  # the first pages did not wait for the compile
        deadline = time.monotonic() + 240
        while not device.compiled and time.monotonic() < deadline:
            device.embed_pages(_pages())
        assert device.compiled, said
        after = device.embed_pages(_pages())
        for pages in (before, after):
            for page, want in zip(pages, oracle, strict=True):
                np.testing.assert_allclose(page.multivector, want, atol=1e-5)
        assert [m for m in said if "took over" in m and "warm-up" in m], said
        for stopping in device._stopping:  # off the pipeline's thread
            stopping.join(timeout=60)
        assert not eager._process.is_alive()  # stopped once its last batch was collected
    finally:
        device.close()
    assert not compiled._process.is_alive()


@pytest.mark.slow  # encoder processes started cold: seconds each
def test_a_device_whose_compile_fails_stays_eager(tiny_model_dir):
    from retrieval.encoder_process import EncoderProcess
    from retrieval.handover import Handover

    model = str(tiny_model_dir)
    eager = EncoderProcess(functools.partial(_load, model), "cpu", warm_up=False)
    failing = EncoderProcess(functools.partial(_load, model, fail=True), "cpu", wait=False)
    said: list[str] = []
    device = Handover(eager, failing, said.append)
    try:
        deadline = time.monotonic() + 120
        while not said and time.monotonic() < deadline:
            assert len(device.embed_pages(_pages())) == 2
        assert said and "compiling failed" in said[0] and "no compiler here" in said[0]
        assert len(device.embed_pages(_pages())) == 2 and not device.compiled
    finally:
        device.close()


@pytest.mark.slow  # encoder processes started cold: seconds each
def test_a_run_that_ends_before_the_compile_does_not_wait_for_it(tiny_model_dir):
    from retrieval.encoder_process import EncoderProcess
    from retrieval.handover import Handover

    model = str(tiny_model_dir)
    eager = EncoderProcess(functools.partial(_load, model), "cpu", warm_up=False)
    slow = EncoderProcess(functools.partial(_load, model, delay_s=600), "cpu", wait=False)
    device = Handover(eager, slow)
    device.embed_pages(_pages())
    start = time.monotonic()
    device.close()
    assert time.monotonic() - start < 15
    assert not slow._process.is_alive()


@pytest.mark.slow  # two processes compile with inductor on the CPU: a minute or two
def test_a_fresh_process_warms_up_from_the_kernels_another_left(tiny_model_dir, tmp_path):
    """PyTorch's portable compile cache: the first process compiles (inductor) and writes the
    file; a second, with empty inductor and Triton caches of its own, loads it and makes the
    same pages."""
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from PIL import Image
        from retrieval import compile_cache
        from retrieval.encoder import Encoder

        encoder = Encoder.load({str(tiny_model_dir)!r}, device="cpu", max_visual_tokens=64,
                               batch_size=2, compile="on")
        warmed = compile_cache.warm_up(encoder, Path(sys.argv[1]))
        page = encoder.embed_pages([Image.effect_noise((224, 308), 64).convert("RGB")])[0]
        print(json.dumps({{"loaded": warmed.loaded, "saved": warmed.saved,
                           "page": page.multivector.tolist()}}))
    """)
    folder = tmp_path / "kernels"
    runs = []
    for i in range(2):
        env = {
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor{i}"),
            "TRITON_CACHE_DIR": str(tmp_path / f"triton{i}"),
        }
        done = subprocess.run(
            [sys.executable, "-c", script, str(folder)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0]["saved"] and not runs[0]["loaded"]
    assert runs[1]["loaded"] and not runs[1]["saved"]
    assert [p.name for p in folder.iterdir()] == [next(folder.iterdir()).name]  # one file
    np.testing.assert_allclose(runs[0]["page"], runs[1]["page"], atol=1e-5)


def test_settings_name_the_compile_cache_folder(tmp_path):
    assert Settings(data_dir=tmp_path).compile_cache_dir == tmp_path / "compile-cache"
    assert Settings(compile_cache=tmp_path / "k").compile_cache_dir == Path(tmp_path / "k")


def test_the_cli_knows_when_the_first_page_waits_for_a_compile():
    from retrieval.encoder_process import IngestEncoder

    def plan(**kw):
        encoder = IngestEncoder(Settings(device="cpu", **kw))
        return encoder.handover, encoder.compiles_first

    assert plan(compile="on", encoder_processes="on") == (True, False)  # eager first
    assert plan(compile="on", encoder_processes="on", compile_handover=False) == (False, True)
    assert plan(compile="on", encoder_processes="off") == (False, True)  # in this process
    assert plan(compile="auto", encoder_processes="on") == (False, False)  # CPU: no compile
