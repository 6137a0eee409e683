"""Ingestion: files -> rendered pages -> embeddings -> Qdrant, as overlapping stages.

    render (process pool) -> batch + preprocess -> forward (one thread per GPU) -> store

The forward threads also prepare each page's point for the store (``PageStore.prepare_page``:
payload, vectors, the backend's own point), so the store's one thread, which must write in
stream order, only writes.

Pages come from the render processes with their pixels in shared memory
(``retrieval.shared_image``); this process handles only their handles, and whoever embeds them
(a thread here, or an encoder process) reads the pixels from there.

Each stage is a thread joined to the next by bounded queues, so the device never waits on
rendering and memory stays flat however large the input. Batches are formed by visual-token
budget, not page count, and may span documents; pages of one grid are batched together (full
batches have the shapes a compiled model was warmed up for). With several GPUs
(``encoder.replicas``), batches go round-robin to one forward thread per device, each fed by
its own queue. The store puts every message back in stream order: it sees a document's
``open``, then its pages, then its ``end`` (or ``fail``), exactly as rendered.

Safe to kill at any point: pages have deterministic ids (re-writing one overwrites it), a
document is marked ``indexed`` only once all its pages are stored and flushed (documents are
marked in batches, about once a second and when the run ends), a re-run skips indexed
documents by content hash before rendering and resumes the others from their missing pages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from indexer.render import RenderedPage, RenderOptions
from indexer.render_pool import (
    DocumentFailed,
    DocumentOpened,
    PageRendered,
    Renderer,
    RenderRequest,
)
from indexer.sources import SourceFile, sha256_file, sidecar_metadata
from retrieval.cpu_threads import one_blas_thread_per_op
from retrieval.encoder import Encoder
from retrieval.errors import Cancelled, ColqwenError, Conflict, NotFound, StoreError
from retrieval.replica import Replica
from retrieval.shared_image import release
from retrieval.store import PageStore
from retrieval.store.model import Filter, Match
from retrieval.store.schema import derived_vectors
from retrieval.types import DocumentRecord, PageEmbedding, PageRecord
from retrieval.words import count

log = logging.getLogger(__name__)

_IDLE_FLUSH_S = 0.05  # flush a partial batch when no page arrived for this long
# How often written pages are made durable, and the documents they completed marked indexed:
# a run killed in the middle of a long document resumes from there, not from its first page.
_MARK_EVERY_S = 1.0


@dataclass
class DocumentResult:
    name: str
    doc_id: str | None
    status: Literal["indexed", "skipped", "failed"]
    pages: int = 0  # pages in the document
    embedded: int = 0  # pages embedded by this run
    error: str | None = None


@dataclass
class IngestProgress:
    files_total: int
    files_done: int = 0
    pages_total: int = 0  # pages to embed, known as documents are opened
    pages_done: int = 0
    pages_resumed: int = 0  # pages of the documents that earlier runs stored already
    failed: int = 0
    phase: Literal["embedding", "indexing", "done"] = "embedding"


@dataclass
class IngestReport:
    documents: list[DocumentResult]
    elapsed_s: float
    stage_s: dict[str, float]  # busy seconds per stage; "first_stored_at", "stored_at": marks
    started_at: float = 0.0  # the run's start, seconds since the epoch

    def count(self, status: str) -> int:
        return sum(d.status == status for d in self.documents)

    @property
    def pages_embedded(self) -> int:
        return sum(d.embedded for d in self.documents)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": {
                "files": len(self.documents),
                "indexed": self.count("indexed"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "pages_embedded": self.pages_embedded,
                "started_at": round(self.started_at, 3),
                "elapsed_s": round(self.elapsed_s, 3),
                "pages_per_s": round(self.pages_embedded / self.elapsed_s, 2)
                if self.elapsed_s
                else 0,
                "stage_busy_s": {k: round(v, 3) for k, v in self.stage_s.items()},
            },
            "documents": [asdict(d) for d in self.documents],
        }


@dataclass(eq=False)
class _Doc:
    """One document's state as it moves through the stages."""

    source: SourceFile
    doc_id: str | None = None
    size: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    existing: DocumentRecord | None = None
    page_count: int = 0
    expected: int = 0  # pages this run set out to embed
    embedded: int = 0


@dataclass
class _Msg:
    kind: Literal["open", "page", "end", "fail", "skip", "done"]
    doc: _Doc
    seq: int = -1  # position in the stream: the store takes messages in this order
    page: RenderedPage | None = None
    error: str | None = None
    prepared: Any = None  # the page as the store writes it (``PageStore.prepare_page``)


@dataclass
class _Work:
    """A batch: its page messages (of one grid where possible) and any control messages that
    travel with it; ``inputs`` are the preprocessed images of its pages."""

    messages: list[_Msg]
    lane: int = 0  # which device runs it (an index into the pipeline's replicas)
    inputs: Any = None

    @property
    def pages(self) -> list[_Msg]:
        return [m for m in self.messages if m.kind == "page"]


_END = object()


class _Stop(Exception):
    """Another stage failed or the run was interrupted."""


class IngestPipeline:
    """Ingests files into one collection. Reusable; not thread-safe (one ``run`` at a time)."""

    def __init__(
        self,
        encoder: Encoder,
        store: PageStore,
        collection: str,
        *,
        render_options: RenderOptions | None = None,
        render_workers: int | None = None,
        batch_size: int | None = None,
        preprocess_threads: int | None = None,
        max_pages: int | None = None,
        on_progress: Callable[[IngestProgress], None] | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        """``renderer``: a render pool to use for every run (its options, workers and page
        limit then apply), started beforehand and left open; by default each run starts and
        stops its own."""
        self.encoder = encoder
        self.replicas = list(encoder.replicas)
        self.store = store
        self.collection = collection
        self.renderer = renderer
        self.render_options = render_options or (
            renderer.options
            if renderer is not None
            else RenderOptions(max_visual_tokens=encoder.max_visual_tokens, family=encoder.family)
        )
        if renderer is not None and renderer.options != self.render_options:
            raise ValueError("the renderer given renders with other options than render_options")
        if self.render_options.family != encoder.family:
            theirs, ours = self.render_options.family, encoder.family
            raise ValueError(
                f"pages would be rendered with {theirs.name}'s geometry {theirs.params()}, but "
                f"the model's processor is configured for {ours.name} {ours.params()}: render "
                "with the encoder's family (RenderOptions.from_settings(settings, encoder.family))"
            )
        self.render_workers = render_workers
        self.batch_size = batch_size or encoder.batch_size
        family, budget = encoder.family, self.render_options.max_visual_tokens
        self.token_budget = self.batch_size * max(  # batch_size pages at most; smaller fill
            budget + family.prompt_tokens, family.sequence_tokens(family.grid_for(595, 842, budget))
        )
        self.on_progress = on_progress
        self.max_pages = max_pages
        # The processor's CPU work (normalise, patchify) costs ~30 ms a page: at GPU speed it
        # needs more than one core. Its torch ops release the GIL, so threads suffice.
        self.preprocess_threads = preprocess_threads or min(4, os.cpu_count() or 1)
        info = store.collection(collection)
        info.check_model(encoder, action="ingest into")
        # Each replica derives its pages' stored vectors beside its device (``Replica``).
        self._derive = functools.partial(derived_vectors, info)
        if info.geometry is None and not store.count_pages(collection):
            info = store.record_geometry(collection, encoder.family.params())  # made empty
        if info.geometry is not None and info.geometry != encoder.family.params():
            raise Conflict(
                f"collection '{collection}' was built with the geometry {info.geometry}; this "
                f"model's processor is configured for {encoder.family.params()}"
            )
        if info.max_visual_tokens != self.render_options.max_visual_tokens:
            raise Conflict(
                f"collection '{collection}' was built with max_visual_tokens="
                f"{info.max_visual_tokens}; this run uses {self.render_options.max_visual_tokens}"
            )

    # --- the run -------------------------------------------------------------------------------

    def run(
        self, sources: Iterable[SourceFile], *, cancel: threading.Event | None = None
    ) -> IngestReport:
        """Ingest ``sources``. Setting ``cancel`` stops the run soon after (``Cancelled``);
        so does Ctrl-C (``KeyboardInterrupt``): every stage has stopped when either returns."""
        sources = list(sources)
        self._progress = IngestProgress(files_total=len(sources))
        self._results: list[DocumentResult] = []
        self._busy: dict[str, float] = {"render": 0.0, "preprocess": 0.0, "store": 0.0}
        self._busy_lock = threading.Lock()
        self._outstanding = 0  # batches of pages the batcher handed on, not finished yet
        self._unmarked: list[_Doc] = []  # documents stored whole, not yet marked indexed
        self._unflushed = 0  # pages written since the last flush
        self._marked_at = time.monotonic()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        rendered: queue.Queue = queue.Queue(maxsize=2 * self.batch_size * len(self.replicas) + 8)
        batches = [queue.Queue(maxsize=2) for _ in self.replicas]  # one per device
        encoded: queue.Queue = queue.Queue(maxsize=2 * len(self.replicas))
        start, started_at = time.perf_counter(), time.time()
        self._started = start
        self._report_progress()  # the run has begun: a progress bar's clock starts here
        with (
            one_blas_thread_per_op(on_gpu=any(r.device.startswith("cuda") for r in self.replicas)),
            self._renderer_of_run() as renderer,
        ):
            stages = [
                threading.Thread(
                    target=self._guard,
                    args=(self._render, renderer, sources, rendered),
                    name="render",
                ),
                threading.Thread(
                    target=self._guard, args=(self._batch, rendered, batches), name="batch"
                ),
                *(
                    threading.Thread(
                        target=self._guard,
                        args=(self._encode, replica, q, encoded),
                        name=f"encode-{replica.device}",
                    )
                    for replica, q in zip(self.replicas, batches, strict=True)
                ),
                threading.Thread(target=self._guard, args=(self._write, encoded), name="store"),
            ]
            for t in stages:
                t.daemon = True
                t.start()
            try:
                for t in stages:
                    while t.is_alive():
                        t.join(timeout=0.2)
                        if cancel is not None and cancel.is_set():
                            raise Cancelled("the ingestion was cancelled")
            except BaseException:
                # Stop every stage before leaving: a thread still inside the model or the store
                # when the interpreter exits aborts the process.
                self._stop.set()
                for t in stages:
                    t.join()
                raise
        if self._error is not None:
            raise self._error
        self._mark_indexed()
        self._busy["stored_at"] = time.perf_counter() - start
        if self._progress.pages_done:
            self._progress.phase = "indexing"
            self._report_progress()
            t0 = time.perf_counter()
            self.store.optimize(self.collection)  # build the HNSW index of the new pages
            self._busy["index"] = time.perf_counter() - t0
        self._progress.phase = "done"
        self._report_progress()
        elapsed = time.perf_counter() - start
        return IngestReport(self._results, elapsed, dict(self._busy), started_at)

    def _renderer_of_run(self) -> contextlib.AbstractContextManager[Renderer]:
        """The render pool given (left open), or one of this run's own."""
        if self.renderer is not None:
            return contextlib.nullcontext(self.renderer)
        return Renderer(
            self.render_options,
            workers=self.render_workers,
            max_pages=self.max_pages,
        )

    def _report_progress(self) -> None:
        if self.on_progress:
            self.on_progress(self._progress)

    def _guard(self, stage, *args) -> None:
        try:
            stage(*args)
        except _Stop:
            pass
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            self._stop.set()

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise _Stop
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                raise queue.Empty
            try:
                return q.get(timeout=wait)
            except queue.Empty:
                continue

    # --- stage 1: plan and render ----------------------------------------------------------

    def _plan(self, sources: list[SourceFile], out: queue.Queue) -> Iterator[RenderRequest]:
        """Skip indexed documents before rendering; resume partial ones from missing pages."""
        for source in sources:
            doc = _Doc(source)
            try:
                doc.metadata = {**source.metadata, **sidecar_metadata(source.path)}
                doc.doc_id, doc.size = sha256_file(source.path)
            except ColqwenError as exc:
                self._put(out, _Msg("fail", doc, error=str(exc)))
                continue
            except OSError as exc:
                self._put(out, _Msg("fail", doc, error=_unreadable(source, exc)))
                continue
            try:
                doc.existing = self.store.document(self.collection, doc.doc_id)
            except NotFound:
                doc.existing = None
            pages = None
            if doc.existing is not None:
                if doc.existing.status == "indexed":
                    self._put(out, _Msg("skip", doc))
                    continue
                if doc.existing.status == "indexing" and doc.existing.page_count:
                    stored = self.store.stored_page_numbers(self.collection, doc.doc_id)
                    pages = [n for n in range(1, doc.existing.page_count + 1) if n not in stored]
                    self._progress.pages_resumed += doc.existing.page_count - len(pages)
                    if not pages:  # all pages were stored before the last run stopped
                        doc.page_count = doc.existing.page_count
                        self._put(out, _Msg("open", doc))
                        self._put(out, _Msg("end", doc))
                        continue
            yield RenderRequest(
                source.path, source.name, password=source.password, pages=pages, tag=doc
            )

    def _render(self, renderer: Renderer, sources: list[SourceFile], out: queue.Queue) -> None:
        current: _Doc | None = None
        events = renderer.stream(self._plan(sources, out))
        while True:
            t0 = time.perf_counter()
            event = next(events, None)
            self._busy["render"] += time.perf_counter() - t0
            if event is None:
                break
            doc: _Doc = event.request.tag
            if current is not None and doc is not current:
                self._put(out, _Msg("end", current))
                current = None
            if isinstance(event, DocumentOpened):
                doc.page_count = event.info.page_count
                wanted = event.request.pages
                doc.expected = len(wanted) if wanted else doc.page_count
                self._progress.pages_total += doc.expected
                current = doc
                self._put(out, _Msg("open", doc))
            elif isinstance(event, PageRendered):
                self._put(out, _Msg("page", doc, page=event.page))
            elif isinstance(event, DocumentFailed):
                current = None
                self._put(out, _Msg("fail", doc, error=str(event.error)))
        if current is not None:
            self._put(out, _Msg("end", current))
        self._put(out, _END)

    # --- stage 2: batch by token budget and preprocess -----------------------------------------

    def _batch(self, inp: queue.Queue, outs: list[queue.Queue]) -> None:
        """Cut batches by token budget; preprocess them on a few threads (on the device that
        will run each: the devices take batches of pages in turn) and hand them to that
        device's queue, in order. Control messages alone ride to the next device's queue
        without taking a turn: else, with two devices and a small document between every two
        batches, one device would get every batch."""
        with ThreadPoolExecutor(self.preprocess_threads, thread_name_prefix="preprocess") as pool:
            in_flight: deque[Future] = deque()
            turn = 0
            for messages in self._batches(inp):
                lane = turn % len(self.replicas)
                if any(m.kind == "page" for m in messages):
                    turn += 1
                    with self._busy_lock:
                        self._outstanding += 1
                in_flight.append(pool.submit(self._preprocess, lane, messages))
                while in_flight and (
                    in_flight[0].done() or len(in_flight) > self.preprocess_threads
                ):
                    work = in_flight.popleft().result()
                    self._put(outs[work.lane], work)
            while in_flight:
                work = in_flight.popleft().result()
                self._put(outs[work.lane], work)
        for out in outs:
            self._put(out, _END)

    def _batches(self, inp: queue.Queue) -> Iterator[list[_Msg]]:
        """Batches of pages of one grid, across documents: ``batch_size`` pages of one grid
        have the shapes a compiled model was warmed up for, and pad nothing. Pages wait in
        their grid's bucket. A page that waited ``_max_lag`` messages goes out with the oldest
        pages of the other buckets, filling a batch; so do the oldest pages when a device has
        nothing to do (``_starving``) and a batch's worth waits, of several grids. When the
        input pauses, the buckets go out only if a device has nothing to do: a small batch
        costs a device nearly what a full one does, so while the devices are busy, more pages
        are worth the wait. Control messages travel with the next batch: the store puts every
        message back in stream order."""
        buckets: dict[tuple[int, int], list[_Msg]] = {}
        controls: list[_Msg] = []
        seq = 0
        max_lag = 4 * self.batch_size * len(self.replicas)
        finished = False
        while not finished:
            try:
                msg = self._get(inp, timeout=_IDLE_FLUSH_S if buckets or controls else None)
            except queue.Empty:
                msg = None  # the input paused
            if msg is None and not self._starving():
                continue
            if msg is _END or msg is None:
                finished = msg is _END
                yield from self._cut(buckets, controls)
                controls = []
                continue
            msg.seq, seq = seq, seq + 1
            if msg.kind != "page":
                controls.append(msg)
                if not buckets:  # nothing to wait for: on its way
                    yield controls
                    controls = []
                continue
            bucket = buckets.setdefault(msg.page.grid, [])
            bucket.append(msg)
            tokens = len(bucket) * self.encoder.family.sequence_tokens(msg.page.grid)
            if len(bucket) >= self.batch_size or tokens >= self.token_budget:
                yield bucket + controls
                del buckets[msg.page.grid]
                controls = []
            waiting = sum(len(b) for b in buckets.values())
            if buckets and (
                seq - min(b[0].seq for b in buckets.values()) > max_lag
                or (waiting >= self.batch_size and self._starving())
            ):
                yield self._oldest(buckets) + controls
                controls = []

    def _cut(
        self, buckets: dict[tuple[int, int], list[_Msg]], controls: list[_Msg]
    ) -> Iterator[list[_Msg]]:
        """Every waiting page, oldest first, in batches; the control messages go with the
        first (alone if no page waits). Empties ``buckets``."""
        while buckets:
            yield self._oldest(buckets) + controls
            controls = []
        if controls:
            yield controls

    def _oldest(self, buckets: dict[tuple[int, int], list[_Msg]]) -> list[_Msg]:
        """Take a batch of the oldest waiting pages, whatever their grid, out of ``buckets``
        (at most ``batch_size`` pages and the token budget)."""
        pages = sorted((m for b in buckets.values() for m in b), key=lambda m: m.seq)
        batch, tokens = [], 0
        for msg in pages:
            cost = self.encoder.family.sequence_tokens(msg.page.grid)
            if batch and (len(batch) >= self.batch_size or tokens + cost > self.token_budget):
                break
            batch.append(msg)
            tokens += cost
        taken = {id(m) for m in batch}
        for grid in list(buckets):
            buckets[grid] = [m for m in buckets[grid] if id(m) not in taken]
            if not buckets[grid]:
                del buckets[grid]
        return batch

    def _starving(self) -> bool:
        """Whether some device has no batch queued or running (batches handed on by the
        batcher and not yet finished, fewer than the devices)."""
        with self._busy_lock:
            return self._outstanding < len(self.replicas)

    def _preprocess(self, lane: int, messages: list[_Msg]) -> _Work:
        work = _Work(messages, lane=lane)
        images = [m.page.image for m in work.pages]
        if images:
            t0 = time.perf_counter()
            work.inputs = self.replicas[lane].preprocess(images)
            self._add_busy("preprocess", time.perf_counter() - t0)
        return work

    def _add_busy(self, stage: str, seconds: float) -> None:
        with self._busy_lock:
            self._busy[stage] = self._busy.get(stage, 0.0) + seconds

    # --- stage 3: forward pass -----------------------------------------------------------------

    def _encode(self, replica: Replica, inp: queue.Queue, out: queue.Queue) -> None:
        """Keep the device ahead: launch a batch, then finish the oldest one in flight (wait
        for its output, lay its tokens out) once ``replica.lookahead`` more are launched.
        Control messages alone go straight on (the store puts them back in stream order): held
        in line, each would take a batch's place and leave the device's queue short."""
        in_flight: deque[tuple[_Work, Any]] = deque()
        while (work := self._get(inp)) is not _END:
            if not work.pages:
                self._put(out, work)
                continue
            t0 = time.perf_counter()
            in_flight.append((work, self._launch(replica, work)))
            self._add_busy(f"encode {replica.device}", time.perf_counter() - t0)
            while len(in_flight) > replica.lookahead:
                self._finish_batch(replica, *in_flight.popleft(), out)
        while in_flight:
            self._finish_batch(replica, *in_flight.popleft(), out)
        self._put(out, _END)

    def _launch(self, replica: Replica, work: _Work) -> Any:
        """The replica's handle on the started batch, for its ``collect``."""
        return replica.start(work.inputs, [m.page.image for m in work.pages], self._derive)

    def _finish_batch(self, replica: Replica, work: _Work, launched: Any, out: queue.Queue) -> None:
        t0 = time.perf_counter()
        try:
            encoded = replica.collect(launched)
        finally:
            with self._busy_lock:
                self._outstanding -= 1
        self._add_busy(f"encode {replica.device}", time.perf_counter() - t0)
        t0 = time.perf_counter()
        for msg, (emb, vectors) in zip(work.pages, encoded, strict=True):
            record = self._record(msg, emb, vectors)
            release(msg.page.image)  # no longer needed: free it early (shared memory too)
            msg.page = None
            # The CPU half of storing the page, here rather than on the store's one thread,
            # which then only writes (in order): at two GPUs that thread was the limit.
            msg.prepared = self.store.prepare_page(self.collection, record)
        self._add_busy("prepare points", time.perf_counter() - t0)
        self._put(out, work)

    # --- stage 4: store ------------------------------------------------------------------------

    def _write(self, inp: queue.Queue) -> None:
        """Store messages in stream order: batches are formed by grid, and several devices
        finish them out of order, but the store sees each document's ``open``, its pages,
        then its ``end``, as they were rendered."""
        waiting: dict[int, _Msg] = {}
        next_seq, ends = 0, 0
        while ends < len(self.replicas):
            work = self._get(inp)
            if work is _END:
                ends += 1
                continue
            for msg in work.messages:
                waiting[msg.seq] = msg
            ready = []
            while next_seq in waiting:
                ready.append(waiting.pop(next_seq))
                next_seq += 1
            if ready:
                self._store(ready)
        if waiting:
            raise RuntimeError(f"messages {sorted(waiting)} arrived without their predecessors")

    def _store(self, messages: list[_Msg]) -> None:
        t0 = time.perf_counter()
        pending: list[tuple[_Doc, Any]] = []
        for msg in messages:
            if msg.kind == "page":
                pending.append((msg.doc, msg.prepared))
                continue
            if msg.kind == "end":
                self._flush(pending)
                pending = []
            self._control(msg)
        self._flush(pending)
        due = time.monotonic() - self._marked_at >= _MARK_EVERY_S
        if due and (self._unmarked or self._unflushed):
            self._mark_indexed()
        self._add_busy("store", time.perf_counter() - t0)
        self._report_progress()

    def _mark_indexed(self) -> None:
        """Make the pages written so far durable, then mark the documents they completed
        indexed, in one catalog write: pages are written without a journal
        (``Backend.write``), and a crash must not lose pages of a document marked indexed.
        Batched because a flush holds the GIL for milliseconds to tens of them (disk sync):
        once a document, it slowed the whole parent at two GPUs."""
        self.store.flush(self.collection)
        self._unflushed = 0
        docs, self._unmarked = self._unmarked, []
        self.store.put_documents(self.collection, [self._catalog(d, "indexed") for d in docs])
        self._marked_at = time.monotonic()

    def _record(self, msg: _Msg, embedding: PageEmbedding, derived: Any) -> PageRecord:
        doc, page = msg.doc, msg.page
        return PageRecord(
            doc_id=doc.doc_id,
            source=doc.source.name,
            page_number=page.page_number,
            page_count=doc.page_count,
            size_pt=page.size_pt,
            rotation=page.rotation,
            pixel_size=page.pixel_size,
            embedding=embedding,
            metadata=doc.metadata,
            text=page.text,
            words=[w.as_list() for w in page.words],
            ocr_error=page.ocr_error,
            derived=derived,
        )

    def _flush(self, pending: list[tuple[_Doc, Any]]) -> None:
        if pending:
            self.store.write_pages(self.collection, [prepared for _, prepared in pending])
            for doc, _ in pending:
                doc.embedded += 1
            self._progress.pages_done += len(pending)
            self._unflushed += len(pending)
            # When a freshly started worker first had something to show: its start-up cost.
            self._busy.setdefault("first_stored_at", time.perf_counter() - self._started)

    def _control(self, msg: _Msg) -> None:
        doc = msg.doc
        if msg.kind == "skip":
            self._finish(
                DocumentResult(doc.source.name, doc.doc_id, "skipped", doc.existing.page_count)
            )
        elif msg.kind == "open":
            self.store.put_document(self.collection, self._catalog(doc, "indexing"))
        elif msg.kind == "end":
            stored = self.store.count_pages(self.collection, Filter((Match("doc_id", doc.doc_id),)))
            if stored != doc.page_count:
                raise StoreError(
                    f"{doc.source.name}: {stored} of {count(doc.page_count, 'page')} stored at "
                    "its end"
                )
            self._unmarked.append(doc)  # marked indexed once its pages are durable
            self._finish(
                DocumentResult(doc.source.name, doc.doc_id, "indexed", doc.page_count, doc.embedded)
            )
        elif msg.kind == "fail":
            if doc.doc_id is not None:
                # Nothing of a failed document stays searchable.
                self.store.delete_pages(self.collection, doc.doc_id)
                self.store.put_document(self.collection, self._catalog(doc, "failed", msg.error))
            self._progress.failed += 1
            self._progress.pages_total -= doc.expected - doc.embedded
            self._finish(
                DocumentResult(doc.source.name, doc.doc_id, "failed", doc.page_count, 0, msg.error)
            )

    def _catalog(self, doc: _Doc, status: str, error: str | None = None) -> DocumentRecord:
        created = doc.existing.created_at if doc.existing else ""
        return DocumentRecord(
            doc_id=doc.doc_id,
            name=doc.source.name,
            page_count=doc.page_count,
            status=status,
            metadata=doc.metadata,
            created_at=created,
            error=error,
            size_bytes=doc.size,
            source_path=str(doc.source.path.resolve()),
            password_sealed=doc.source.password_sealed,
        )

    def _finish(self, result: DocumentResult) -> None:
        self._results.append(result)
        self._progress.files_done += 1


def _unreadable(source: SourceFile, exc: OSError) -> str:
    """Why a source file cannot be read, as a user can act on it."""
    path = source.path
    if path.is_symlink() and not path.exists():
        return f"{source.name}: a link to {os.readlink(path)}, which does not exist"
    return f"{source.name}: cannot be read ({exc.strerror})"
