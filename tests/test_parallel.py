"""Ingestion over several devices: data-parallel replicas of the model, one ordered store writer.
On CPU two replicas stand in for two GPUs (same code path); the compiled forward pass is checked
against the eager one on a GPU (marked)."""

from __future__ import annotations

import fcntl
import pickle
from pathlib import Path

import numpy as np
import pytest

from indexer.pipeline import IngestPipeline
from indexer.render import RenderOptions
from indexer.sources import discover
from retrieval.encoder import Encoder, resolve_devices
from retrieval.errors import ConfigurationError
from retrieval.shared_image import share
from retrieval.store import PageStore
from retrieval.store.edge import EdgeBackend
from tests.documents import make_pdf

BUDGET = 64


def ingest(encoder: Encoder, folder: Path, data: Path) -> tuple[PageStore, dict]:
    store = PageStore(EdgeBackend(data))
    store.create_collection("c", model=encoder.model_id, max_visual_tokens=BUDGET, dim=encoder.dim)
    pipeline = IngestPipeline(
        encoder,
        store,
        "c",
        render_options=RenderOptions(max_visual_tokens=BUDGET, family=encoder.family),
        render_workers=2,
        batch_size=2,
    )
    events = []
    real_control = pipeline._control

    def control(msg):  # the order the store sees: open, pages, end per document
        events.append((msg.kind, msg.doc.source.name))
        return real_control(msg)

    pipeline._control = control
    before = shared_segments()
    report = pipeline.run(discover([folder]))
    assert report.ok
    assert shared_segments() == before  # every page's shared memory was freed
    return store, {"report": report, "events": events}


def shared_segments() -> set[str]:
    """The shared-memory segments of this machine (``SharedMemory`` names them psm_*)."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("psm_*")} if shm.is_dir() else set()


def test_two_replicas_store_every_page_once_in_order(tiny_model_dir, tmp_path):
    folder = tmp_path / "pdfs"
    folder.mkdir()
    sizes = [(595, 842), (612, 792), (842, 595), (300, 500)]
    for i, size in enumerate(sizes):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([size] * (3 + i)))
    one = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET, batch_size=2)
    two = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET, batch_size=2)
    two.replicate(["cpu"])
    assert len(two.replicas) == 2 and two.replicas[1].model is not two.model
    single, _ = ingest(one, folder, tmp_path / "one")
    double, b = ingest(two, folder, tmp_path / "two")
    busy = b["report"].stage_s
    assert sum(k.startswith("encode") for k in busy) == 1  # both threads on "cpu": one key
    opened = [name for kind, name in b["events"] if kind == "open"]
    ended = [name for kind, name in b["events"] if kind == "end"]
    assert opened == ended == [f"d{i}.pdf" for i in range(4)]
    assert double.count_pages("c") == single.count_pages("c") == sum(3 + i for i in range(4))
    for doc in single.documents("c"):
        assert sorted(double.stored_page_numbers("c", doc.doc_id)) == list(
            range(1, doc.page_count + 1)
        )
    # Same embeddings whichever replica ran a page.
    q = np.random.default_rng(0).standard_normal((5, one.dim)).astype(np.float32)
    for mode in ("exact", "pooled"):  # the token vectors, and the FDEs
        scores = [
            {(h.doc_id, h.page): h.score for h in s.search("c", q, top_k=30, mode=mode)}
            for s in (single, double)
        ]
        assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 18
        for key, score in scores[0].items():
            assert scores[1][key] == pytest.approx(score, abs=1e-3), mode
    single.close()
    double.close()


class LoggedBackend(EdgeBackend):
    """The embedded backend, logging page writes, flushes and ``indexed`` catalog records."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log: list[tuple[str, object]] = []

    def write(self, name, prepared):
        if name == "c":
            self.log.append(("write", {point.payload["doc_id"] for point, _ in prepared}))
        super().write(name, prepared)

    def flush(self, name):
        self.log.append(("flush", name))
        super().flush(name)

    def upsert(self, name, points):
        marked = {p.payload["doc_id"] for p in points if p.payload.get("status") == "indexed"}
        self.log.append(("indexed", marked))
        super().upsert(name, points)


def test_documents_are_marked_indexed_only_after_their_pages_are_flushed(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Pages are written without a journal, so a crash loses what was not flushed: every
    document's ``indexed`` record must come after a flush that follows all its page writes.
    Marks are batched (a flush holds the parent's GIL): with the interval longer than the
    run, one flush of the pages marks every document, in one catalog write."""
    import indexer.pipeline as pipeline_module

    folder = tmp_path / "pdfs"
    folder.mkdir()
    for i in range(5):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([(595, 842)] * (1 + i)))
    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    for interval in (0.0, 3600.0):
        monkeypatch.setattr(pipeline_module, "_MARK_EVERY_S", interval)
        backend = LoggedBackend(tmp_path / str(interval))
        store = PageStore(backend)
        store.create_collection("c", model=encoder.model_id, max_visual_tokens=BUDGET)
        backend.log.clear()
        options = RenderOptions(max_visual_tokens=BUDGET, family=encoder.family)
        pipeline = IngestPipeline(encoder, store, "c", render_options=options, batch_size=2)
        assert pipeline.run(discover([folder])).count("indexed") == 5
        unflushed: set[str] = set()  # documents with page writes since the last flush
        marks = []
        for event, what in backend.log:
            if event == "write":
                unflushed |= what
            elif event == "flush" and what == "c":
                unflushed = set()
            elif event == "indexed" and what:
                assert not what & unflushed, (what, unflushed)
                marks.append(what)
        assert set().union(*marks) == {d.doc_id for d in store.documents("c")}
        flushes = [e for e in backend.log if e == ("flush", "c")]
        if interval:
            assert len(flushes) == len(marks) == 1
        else:
            assert len(marks) > 1
        store.close()


def test_device_lists_are_checked():
    with pytest.raises(ConfigurationError, match="CUDA devices"):
        resolve_devices("cpu,cpu")
    assert resolve_devices("cpu") == ["cpu"]


def float32_reference(encoder: Encoder, pages: list) -> list:
    """``pages`` embedded by a float32 copy of ``encoder``'s model (on its device, freed after)."""
    import copy

    exact = Encoder(
        copy.deepcopy(encoder.model).float(),
        encoder.processor,
        model_id="fp32",
        device=encoder.device,
        max_visual_tokens=encoder.max_visual_tokens,
        batch_size=encoder.batch_size,
    )
    return exact.embed_pages(pages)


def token_cosines(a: list, b: list):
    """Per-token cosines between two lists of the same pages' embeddings, concatenated."""
    import torch

    return torch.cat(
        [
            torch.nn.functional.cosine_similarity(
                torch.tensor(x.multivector), torch.tensor(y.multivector), dim=-1
            )
            for x, y in zip(a, b, strict=True)
        ]
    )


@pytest.mark.gpu
def test_compiled_forward_is_as_faithful_as_eager_on_the_full_size_model():
    """bf16, the real architecture with random weights: the compiled path's tokens stay within
    bf16 noise of the eager path's, and as close as eager's to a float32 reference."""
    from PIL import Image

    from bench.ingest_bench import full_size_encoder

    encoder = full_size_encoder("cuda", 8)
    pages = [Image.effect_noise((644, 924), 64).convert("RGB") for _ in range(4)]
    pages += [Image.effect_noise((672, 868), 64).convert("RGB") for _ in range(4)]
    reference = float32_reference(encoder, pages)
    eager = encoder.embed_pages(pages)
    encoder.compile()
    fast = encoder.embed_pages(pages)
    fast_eager, eager_ref, fast_ref = (
        token_cosines(fast, eager),
        token_cosines(eager, reference),
        token_cosines(fast, reference),
    )
    for name, c in [("compiled/eager", fast_eager), ("eager/fp32", eager_ref),
                    ("compiled/fp32", fast_ref)]:  # fmt: skip
        print(f"{name}: min {float(c.min()):.5f}, mean {float(c.mean()):.6f}")
    assert [x.grid for x in fast] == [x.grid for x in eager]
    assert float(fast_eager.min()) >= 0.998
    assert float(fast_ref.mean()) >= float(eager_ref.mean()) - 1e-4
    assert float(fast_ref.min()) >= float(eager_ref.min()) - 1e-3


def test_a_gpu_run_limits_blas_to_one_thread_and_leaves_torch_alone():
    """numpy's BLAS gets one thread per call beside the GPU's work; torch's own thread count,
    which compiled graphs guard on, stays as it was."""
    import torch
    from threadpoolctl import threadpool_info

    from retrieval.cpu_threads import one_blas_thread_per_op

    before = torch.get_num_threads()
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    with one_blas_thread_per_op(on_gpu=True):
        assert torch.get_num_threads() == before
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == blas


def test_a_collection_refuses_another_model(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from retrieval.errors import Conflict
    from retrieval.search import QueryModel, Searcher

    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    store = PageStore(EdgeBackend(tmp_path / "q"))
    store.create_collection(
        "c", model="other", max_visual_tokens=BUDGET, dim=encoder.dim, family="colqwen2_5"
    )
    options = RenderOptions(max_visual_tokens=BUDGET, family=encoder.family)
    with pytest.raises(Conflict, match=r"built with other \(colqwen2_5, 128-d vectors\)"):
        IngestPipeline(encoder, store, "c", render_options=options)
    assert store.collection("c").family == "colqwen2_5"
    # The same family and vector size, another checkpoint (here an adapter): not comparable.
    store.create_collection(
        "a", model=str(tiny_adapter_dir), max_visual_tokens=BUDGET, dim=encoder.dim
    )
    with pytest.raises(Conflict, match="cannot ingest into it"):
        IngestPipeline(encoder, store, "a", render_options=options)
    with pytest.raises(Conflict, match="cannot search it"):
        Searcher(store, lambda info: QueryModel(encoder), collection="a").search("anything")
    # A local copy of a hub checkpoint is that checkpoint: its name decides.
    store.create_collection(
        "h", model=f"someone/{tiny_model_dir.name}", max_visual_tokens=BUDGET, dim=encoder.dim
    )
    IngestPipeline(encoder, store, "h", render_options=options)
    store.create_collection("d", model="tiny", max_visual_tokens=BUDGET, dim=encoder.dim)
    assert store.collection("d").family == "colqwen2"  # and records made before it read so too
    store.close()


def test_pages_of_one_grid_are_batched_together_across_documents(tiny_model_dir, tmp_path):
    """Documents of two page shapes, interleaved: full batches hold pages of one grid, taken
    across documents, and the store still sees each document's open, pages, end in order."""
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for i in range(6):
        size = (595, 842) if i % 2 == 0 else (842, 595)
        (folder / f"d{i}.pdf").write_bytes(make_pdf([size] * 3))
    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    grids = []
    forward = encoder.forward

    def recording_forward(batch):
        grids.append({tuple(g) for g in batch.inputs["image_grid_thw"].tolist()})
        return forward(batch)

    encoder.forward = recording_forward
    store, seen = ingest(encoder, folder, tmp_path / "data")  # batches of 2 pages
    # Each document's third page waits for the next document of its shape: every batch is of
    # one grid but perhaps the last, which takes what is left when the input ends. Under load
    # a render can come late enough that the idle device is given one partial batch early.
    assert len(grids) in (9, 10) and sum(len(g) > 1 for g in grids) <= 1
    opened = [name for kind, name in seen["events"] if kind == "open"]
    ended = [name for kind, name in seen["events"] if kind == "end"]
    assert opened == ended == [f"d{i}.pdf" for i in range(6)]
    assert store.count_pages("c") == 18
    store.close()


def _batcher(tiny_model_dir: Path, tmp_path: Path, *, busy: bool) -> IngestPipeline:
    """A pipeline's batching stage, batches of 4 pages, its one device busy or not."""
    import threading

    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    store = PageStore(EdgeBackend(tmp_path / "q"))
    store.create_collection("c", model=encoder.model_id, max_visual_tokens=BUDGET, dim=encoder.dim)
    pipeline = IngestPipeline(encoder, store, "c", batch_size=4)
    pipeline._busy_lock, pipeline._stop = threading.Lock(), threading.Event()
    pipeline._outstanding = 1 if busy else 0  # batches queued or running on the device
    return pipeline


def _pages(grids: list[tuple[int, int]]) -> list:
    from indexer.pipeline import _Doc, _Msg
    from indexer.render import RenderedPage
    from indexer.sources import SourceFile

    doc = _Doc(SourceFile(Path("d.pdf"), "d.pdf"))
    return [
        _Msg("page", doc, page=RenderedPage(None, i + 1, len(grids), (0, 0), 0, grid))
        for i, grid in enumerate(grids)
    ]


@pytest.mark.parametrize("busy", [True, False])
def test_a_pause_in_rendering_sends_a_partial_batch_only_to_an_idle_device(
    tiny_model_dir, tmp_path, busy
):
    """A small batch costs a device nearly what a full one does: while the device has work,
    pages keep waiting for their batch to fill; an idle device gets what there is."""
    import queue
    import threading
    import time

    from indexer.pipeline import _END

    pipeline = _batcher(tiny_model_dir, tmp_path, busy=busy)
    inp: queue.Queue = queue.Queue()
    pages = _pages([(4, 3)] * 4)

    def feed():
        for msg in pages[:3]:
            inp.put(msg)
        time.sleep(0.5)  # rendering pauses, ten times the batcher's patience
        inp.put(pages[3])
        inp.put(_END)

    threading.Thread(target=feed, daemon=True).start()
    sizes = [len(batch) for batch in pipeline._batches(inp)]
    assert sizes == ([4] if busy else [3, 1])


def test_a_page_that_waited_too_long_fills_a_batch_with_the_oldest_others(tiny_model_dir, tmp_path):
    """A page of a rare grid does not wait for its batch forever, nor go out alone: it leaves
    with the oldest pages of other grids, a full batch."""
    import queue

    from indexer.pipeline import _END

    pipeline = _batcher(tiny_model_dir, tmp_path, busy=True)
    rare, others = (9, 9), [(4, 3 + i // 3) for i in range(30)]  # ten grids, 3 pages each
    pages = _pages([rare, *others])
    inp: queue.Queue = queue.Queue()
    for msg in [*pages, _END]:
        inp.put(msg)
    batches = list(pipeline._batches(inp))
    first = batches[0]
    assert first[0] is pages[0] and len(first) == 4
    assert [m.page.grid for m in first[1:]] == [others[0]] * 3
    assert sorted(m.seq for b in batches for m in b) == list(range(31))


def test_an_idle_device_gets_a_full_batch_of_several_grids_rather_than_wait(
    tiny_model_dir, tmp_path
):
    """Pages of many grids, none filling its own batch: an idle device takes the oldest
    batch's worth of them at once, instead of waiting for a grid to fill or a page to age."""
    import queue

    pipeline = _batcher(tiny_model_dir, tmp_path, busy=False)
    pages = _pages([(4, 3 + i % 5) for i in range(5)])  # five grids, one page each
    inp: queue.Queue = queue.Queue()
    for msg in pages:
        inp.put(msg)
    first = next(pipeline._batches(inp))
    assert [m.seq for m in first] == [0, 1, 2, 3]


def test_documents_between_batches_leave_the_device_its_queue(tiny_model_dir, tmp_path):
    """Small documents' open and end messages pass the forward stage without taking a batch's
    place: the device keeps ``lookahead`` batches queued behind the running one however many
    documents come between them (before, each counted as a batch, and the queue ran dry)."""
    import queue

    from PIL import Image

    from indexer.pipeline import _END, _Msg, _Work

    pipeline = _batcher(tiny_model_dir, tmp_path, busy=False)
    pipeline._busy = {}
    pipeline.store.prepare_page = lambda collection, record: record.page_number

    class Device:
        """Counts the batches launched and not yet waited for, at each wait."""

        lookahead, device = 2, "fake"

        def __init__(self) -> None:
            self.launched, self.queued_at_wait = 0, []

        def start(self, inputs, images, derive):
            self.launched += 1
            return len(images)

        def collect(self, n):
            self.queued_at_wait.append(self.launched - len(self.queued_at_wait))
            return [(None, None)] * n

    device = Device()
    inp, out = queue.Queue(), queue.Queue()
    pages = _pages([(4, 3)] * 12)
    for msg in pages:
        msg.page.image = Image.new("RGB", (4, 3))
    for i in range(6):
        inp.put(_Work(pages[2 * i : 2 * i + 2]))
        for kind in ("end", "open"):  # a one-page document's worth of control messages
            inp.put(_Work([_Msg(kind, pages[0].doc)]))
    inp.put(_END)
    pipeline._encode(device, inp, out)
    drained = device.queued_at_wait[: -device.lookahead]
    assert drained == [device.lookahead + 1] * (6 - device.lookahead)
    works = [out.get() for _ in range(out.qsize())]
    assert works[-1] is _END and len(works) == 6 + 12 + 1
    assert [m.prepared for m in pages] == list(range(1, 13))  # each page ready to write


def test_two_devices_take_batches_in_turn_whatever_documents_lie_between(tiny_model_dir, tmp_path):
    """A small document's open and end messages between every two batches do not take a
    device's turn: two devices get three batches each of six (before, one got all six)."""
    import queue

    from indexer.pipeline import _END, _Msg

    class Device:
        def preprocess(self, images):
            return images

    pipeline = _batcher(tiny_model_dir, tmp_path, busy=False)
    pipeline._busy = {}
    pipeline.replicas = [Device(), Device()]
    pages = _pages([(4, 3)] * 12)
    stream = []
    for i in range(6):
        stream.append(pages[2 * i : 2 * i + 2])
        stream.append([_Msg("end", pages[0].doc)])  # alone: no pages wait
    pipeline._batches = lambda inp: iter(stream)
    outs = [queue.Queue(), queue.Queue()]
    pipeline._batch(queue.Queue(), outs)
    lanes = [[w for w in iter(out.get, _END) if w.pages] for out in outs]
    assert [len(batches) for batches in lanes] == [3, 3]
    assert [w.messages for w in lanes[0]] == stream[0::4]


def _in_process_factory(model_dir: Path):
    import functools

    return functools.partial(
        Encoder.load, str(model_dir), device="cpu", max_visual_tokens=BUDGET, batch_size=2
    )


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_encoder_processes_store_what_the_in_process_encoder_stores(tiny_model_dir, tmp_path):
    """The model in a child process per device (as ingestion runs it on GPUs): the same pages,
    the same vectors, every page once, documents in order."""
    from retrieval.encoder_process import EncoderProcess

    folder = tmp_path / "pdfs"
    folder.mkdir()
    for i, size in enumerate([(595, 842), (842, 595), (300, 500)]):
        (folder / f"d{i}.pdf").write_bytes(make_pdf([size] * (3 + i)))
    one = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET, batch_size=2)
    single, _ = ingest(one, folder, tmp_path / "one")
    factory = _in_process_factory(tiny_model_dir)
    with EncoderProcess(factory, "cpu") as a, EncoderProcess(factory, "cpu") as b:
        if hasattr(fcntl, "F_GETPIPE_SZ"):  # pages come back in few turns of a wide pipe
            assert fcntl.fcntl(a._responses._reader.fileno(), fcntl.F_GETPIPE_SZ) >= 1 << 20
        one.replicas = [a, b]
        try:
            double, events = ingest(one, folder, tmp_path / "two")
        finally:
            one.replicas = [one]
    opened = [name for kind, name in events["events"] if kind == "open"]
    ended = [name for kind, name in events["events"] if kind == "end"]
    assert opened == ended == ["d0.pdf", "d1.pdf", "d2.pdf"]
    assert double.count_pages("c") == single.count_pages("c") == 12
    for doc in single.documents("c"):
        for n in range(1, doc.page_count + 1):
            _, ours = double.page_tokens("c", doc.doc_id, n)
            _, theirs = single.page_tokens("c", doc.doc_id, n)
            np.testing.assert_allclose(ours, theirs, atol=1e-3)  # stored as float16
    # The FDEs and pooled vectors the processes derived rank and score as the store's own.
    q = np.random.default_rng(0).standard_normal((5, one.dim)).astype(np.float32)
    for mode in ("pooled", "two_stage"):
        scores = [
            {(h.doc_id, h.page): h.score for h in s.search("c", q, top_k=30, mode=mode)}
            for s in (single, double)
        ]
        assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 12, mode
        for key, score in scores[0].items():
            assert scores[1][key] == pytest.approx(score, abs=1e-3), mode
    single.close()
    double.close()


def test_the_store_keeps_vectors_derived_beforehand_and_recomputes_others(tmp_path):
    """``PageRecord.derived`` (as encoder processes send it) is stored as given when it has
    the collection's vectors, and ignored (recomputed) when it does not."""
    from retrieval.store.schema import derived_vectors
    from retrieval.types import PageEmbedding, PageRecord

    store = PageStore(EdgeBackend(tmp_path / "q"))
    store.create_collection("c", model="m", max_visual_tokens=BUDGET, dim=64)
    info = store.collection("c")
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((12, 64)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    grid = tokens[1:11].reshape(2, 5, 64)
    emb = PageEmbedding(tokens, (2, 5), grid, tokens[[0, 11]], ((1, 10),))

    def record(n, derived):
        size = (595.0, 842.0)
        return PageRecord("d" * 64, "x.pdf", n, 3, size, 0, (140, 56), emb, derived=derived)

    given = derived_vectors(info, emb)
    marked = {k: np.full_like(v, 0.5) if k == "fde" else v for k, v in given.items()}
    wrong = {"other": given["fde"]}
    store.upsert_pages("c", [record(1, marked), record(2, wrong), record(3, None)])
    records, _ = store.backend.scroll(store._points("c"), None, 10, vectors=["fde"])  # float16
    stored = {r.payload["page"]: r.vectors["fde"] for r in records}
    np.testing.assert_allclose(stored[1], marked["fde"], atol=2e-3)  # kept as given
    np.testing.assert_allclose(stored[2], given["fde"], atol=2e-3)  # recomputed
    np.testing.assert_allclose(stored[3], given["fde"], atol=2e-3)
    store.close()


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_an_encoder_process_that_cannot_load_its_model_says_why(tmp_path):
    import functools

    from retrieval.encoder_process import EncoderProcess
    from retrieval.errors import ModelLoadError

    factory = functools.partial(Encoder.load, str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match=r"could not start.*does not exist"):
        EncoderProcess(factory, "cpu")


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_a_dead_encoder_process_fails_the_batch_instead_of_hanging(tiny_model_dir):
    from PIL import Image

    from retrieval.encoder_process import EncoderProcess
    from retrieval.errors import EncoderError

    with EncoderProcess(_in_process_factory(tiny_model_dir), "cpu") as process:
        [page] = process.embed_pages([Image.new("RGB", (224, 308), "white")])
        assert page.grid == (9, 6)  # 224 x 308 px resized within the 64-token budget
        process._process.kill()
        before = shared_segments()
        image = pickle.loads(pickle.dumps(share(Image.new("RGB", (224, 308), "white"))))
        with pytest.raises(EncoderError, match="exited"):
            process.embed_pages([image])
        assert shared_segments() == before  # its page's shared memory, handed over, is freed


def test_non_finite_embeddings_are_refused_rather_than_stored(tiny_model_dir):
    import torch
    from PIL import Image

    from retrieval.errors import EncoderError

    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    forward = encoder.forward
    encoder.forward = lambda batch: forward(batch) * torch.nan
    with pytest.raises(EncoderError, match="non-finite"):
        encoder.embed_pages([Image.new("RGB", (224, 308), "white")])


def test_encoder_processes_are_used_where_settings_ask_for_them(monkeypatch):
    import retrieval.encoder
    from retrieval.config import Settings
    from retrieval.encoder_process import process_devices

    assert process_devices(Settings(device="cpu")) is None  # auto: only on GPUs
    monkeypatch.setattr(retrieval.encoder, "resolve_devices", lambda device: ["cuda:0"])
    assert process_devices(Settings(device="cuda")) == ["cuda:0"]
    assert process_devices(Settings(device="cuda", encoder_processes="off")) is None
    monkeypatch.undo()
    assert process_devices(Settings(device="cpu", encoder_processes="off")) is None
    assert process_devices(Settings(device="cpu", encoder_processes="on")) == ["cpu"]


@pytest.mark.slow  # a process killed or started cold: seconds each
def test_a_dead_encoder_process_does_not_hold_up_the_parent_s_exit(tiny_model_dir):
    """A batch sent to a process that died can never be delivered; the parent must still
    exit (multiprocessing joins a queue's feeder thread at exit unless told not to)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import functools
        from PIL import Image
        from retrieval.encoder import Encoder
        from retrieval.encoder_process import EncoderProcess
        from retrieval.errors import EncoderError

        if __name__ == "__main__":
            factory = functools.partial(Encoder.load, {str(tiny_model_dir)!r}, device="cpu")
            process = EncoderProcess(factory, "cpu")
            process._process.kill()
            try:
                process.embed_pages([Image.new("RGB", (224, 308), "white")])
            except EncoderError:
                pass
            process.close()
            print("closed")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "closed" in done.stdout, done.stderr[-2000:]


def test_one_render_pool_serves_many_runs(tiny_model_dir, tmp_path):
    """A pool given to the pipeline (the worker's, for all its jobs; the CLI's, started while
    the model loads) renders every run with the same processes and stays open after them."""
    from indexer.render_pool import Renderer

    folder = tmp_path / "pdfs"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf([(595, 842)] * 3))
    encoder = Encoder.load(str(tiny_model_dir), device="cpu", max_visual_tokens=BUDGET)
    store = PageStore(EdgeBackend(tmp_path / "data"))
    options = RenderOptions(max_visual_tokens=BUDGET, family=encoder.family)
    with Renderer(options, workers=2).start(wait=True) as renderer:
        workers = set(renderer._executor._processes)
        assert len(workers) == 2
        for name in ("first", "second"):
            store.create_collection(name, model=encoder.model_id, max_visual_tokens=BUDGET)
            pipeline = IngestPipeline(encoder, store, name, batch_size=2, renderer=renderer)
            assert pipeline.run(discover([folder])).pages_embedded == 3
        assert set(renderer._executor._processes) == workers
    store.close()
