"""Parallel rendering: a pool of processes (PDFium is not thread-safe) feeding an ordered stream.

``Renderer.stream(requests)`` takes documents and yields, in order, for each document either
``DocumentOpened`` followed by its ``PageRendered`` events, or a ``DocumentFailed`` with the
reason (possibly after some pages). At most ``2 x workers`` pages are in flight, so memory stays
flat however long the documents; the next documents are opened while one renders. A worker
that crashes, runs out of its memory cap or hangs on a malformed file fails that document only;
the pool is rebuilt and the stream goes on.

With ``workers=0`` everything runs in the calling process (no crash isolation).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from indexer.children import child_pool, sigint_blocked
from indexer.render import DocumentInfo, RenderedPage, RenderOptions, Source, open_document
from retrieval.errors import ColqwenError, InvalidDocument, PageTooLarge, RendererUnavailable
from retrieval.shared_image import share
from retrieval.words import count

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_CRASHES = 3


@dataclass(frozen=True, eq=False)
class RenderRequest:
    """A document to render. ``pages``: 1-based page numbers to render (default: all)."""

    source: Source
    name: str
    password: str | None = None
    pages: Sequence[int] | None = None
    tag: object = field(default=None, compare=False)  # the caller's, passed back untouched


@dataclass(frozen=True)
class DocumentOpened:
    request: RenderRequest
    info: DocumentInfo


@dataclass(frozen=True)
class PageRendered:
    request: RenderRequest
    page: RenderedPage


@dataclass(frozen=True)
class DocumentFailed:
    request: RenderRequest
    error: ColqwenError


RenderEvent = DocumentOpened | PageRendered | DocumentFailed


# --- worker side -------------------------------------------------------------------------------

_open: tuple[tuple, object] | None = None  # (key, Document): the last document this worker opened


def _document(source: Source, name: str, password: str | None, options: RenderOptions):
    global _open
    key = (source if isinstance(source, Path) else hash(source), name, password, options)
    if _open is not None and _open[0] == key:
        return _open[1]
    if _open is not None:
        _open[1].close()
        _open = None
    document = open_document(source, name=name, password=password, options=options)
    _open = (key, document)
    return document


def _forget() -> None:
    """Close the document this process keeps open between its pages, if any."""
    global _open
    if _open is not None:
        _open[1].close()
        _open = None


def _probe(source: Source, name: str, password: str | None, options: RenderOptions) -> DocumentInfo:
    return _guarded(name, lambda: _document(source, name, password, options).info)


def _render(
    source: Source,
    name: str,
    password: str | None,
    options: RenderOptions,
    index: int,
    shared: bool,
) -> RenderedPage:
    page = _guarded(name, lambda: _document(source, name, password, options).render(index))
    if shared:  # the pixels reach whoever embeds them without passing through pipes
        page = dataclasses.replace(page, image=share(page.image))
    return page


def _ready() -> None:
    import pypdfium2  # noqa: F401 (what a worker's first document would otherwise wait for)


def _guarded(name: str, work):
    try:
        return work()
    except ColqwenError:
        raise
    except MemoryError:
        raise InvalidDocument(f"{name}: rendering needs more memory than allowed") from None
    except Exception as exc:
        raise InvalidDocument(f"{name}: cannot be rendered ({type(exc).__name__}: {exc})") from None


# --- caller side -------------------------------------------------------------------------------


class _Inline:
    """An executor that runs each task at submit time, in this process."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@dataclass
class _Pending:
    index: int  # 0-based page index
    future: Future


@dataclass(eq=False)
class _Stream:
    """A document in the stream: its probe, then the renders of its pages, in order."""

    request: RenderRequest
    probe: Future  # its ``DocumentInfo``
    info: DocumentInfo | None = None  # the probe's result, once taken and checked
    announced: bool = False  # its ``DocumentOpened`` was yielded
    todo: deque[int] = field(default_factory=deque)  # pages not submitted yet
    pending: deque[_Pending] = field(default_factory=deque)  # pages submitted, in order


class Renderer:
    """A reusable rendering pool. Use as a context manager or call ``close()``."""

    # Documents opened ahead of the one rendering: a probe waits behind the pages already
    # queued in the pool, and a document's pages cannot be queued before its page count is
    # known; without probes ahead the pool ran dry at every document's boundary.
    probe_ahead = 2

    def __init__(
        self,
        options: RenderOptions | None = None,
        *,
        workers: int | None = None,
        page_timeout_s: float = 120.0,
        memory_limit_mb: int | None = 3072,
        max_pages: int | None = None,
        shared_memory: bool = True,
    ) -> None:
        self.options = options or RenderOptions()
        self.workers = os.cpu_count() or 1 if workers is None else workers
        self.page_timeout_s = page_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_pages = max_pages
        # Pages from the workers keep their pixels in shared memory (``retrieval.shared_image``)
        self.shared_memory = shared_memory and self.workers > 0
        self._executor = self._new_executor()
        self._crashes = 0  # consecutive pool crashes, reset by any rendered page

    def _new_executor(self):
        if self.workers <= 0:
            return _Inline()
        return child_pool(self.workers, self.memory_limit_mb)

    def start(self, *, wait: bool = False) -> Renderer:
        """Start every worker now (a pool otherwise starts them as the first pages ask, a
        second or two into the first run), in the background unless ``wait``: for a caller
        with other work meanwhile, such as loading the model, or many runs to serve."""
        ready = [self._submit(_ready) for _ in range(self.workers)]
        if wait:
            for future in ready:
                future.result(timeout=self.page_timeout_s)
        return self

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.workers <= 0:
            _forget()  # rendering ran here: the last document it opened is closed with it

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one document --------------------------------------------------------------------------

    def info(self, request: RenderRequest) -> DocumentInfo:
        """Open the document (in a worker) and return its page count; raises on bad input."""
        for event in self.stream([request]):
            if isinstance(event, DocumentFailed):
                raise event.error
            if isinstance(event, DocumentOpened):
                return event.info
        raise AssertionError("unreachable")

    def pages(self, request: RenderRequest) -> Iterator[RenderedPage]:
        """Render one document's pages in order; raises its error if it fails."""
        for event in self.stream([request]):
            if isinstance(event, DocumentFailed):
                raise event.error
            if isinstance(event, PageRendered):
                yield event.page

    # --- many documents ------------------------------------------------------------------------

    def stream(self, requests: Iterable[RenderRequest]) -> Iterator[RenderEvent]:
        """Events for each document in order; up to ``2 x workers`` pages render ahead, and the
        next ``probe_ahead`` documents are opened meanwhile."""
        window = max(2, 2 * self.workers)
        requests = iter(requests)
        docs: deque[_Stream] = deque()  # the documents in the stream, in order
        in_flight = 0  # page renders submitted and not yet taken
        try:
            while True:
                while len(docs) <= self.probe_ahead and (request := next(requests, None)):
                    if request.pages is not None and not request.pages:
                        raise ValueError("pages, when given, must name at least one page")
                    docs.append(_Stream(request, self._submit(_probe, *self._args(request))))
                in_flight += self._fill(docs, window - in_flight)
                if not docs:
                    return
                head, where = docs[0], -1
                try:
                    if not head.announced:
                        event = self._announce(head)
                        if isinstance(event, DocumentFailed):
                            docs.popleft()
                        yield event
                    elif head.pending:
                        item = head.pending.popleft()
                        in_flight, where = in_flight - 1, item.index
                        page = item.future.result(timeout=self.page_timeout_s)
                        self._crashes = 0
                        yield PageRendered(head.request, page)
                    elif not head.todo:
                        docs.popleft()  # every page it asked for was yielded
                except ColqwenError as exc:
                    docs.popleft()
                    in_flight -= len(head.pending)
                    for item in head.pending:  # the failed document's other pages
                        item.future.cancel()
                    yield DocumentFailed(head.request, exc)
                except (BrokenProcessPool, FutureTimeout) as exc:
                    docs.popleft()
                    in_flight -= len(head.pending)
                    yield DocumentFailed(head.request, self._crash_error(head.request, where, exc))
                    self._restart(docs)
        finally:  # a stream left early (a run stopped): its renders are not wanted
            for doc in docs:
                doc.probe.cancel()
                for item in doc.pending:
                    item.future.cancel()

    def _fill(self, docs: deque[_Stream], room: int) -> int:
        """Submit up to ``room`` pages in stream order: the head document's, then those of the
        next documents whose probe is back. Returns how many were submitted."""
        submitted = 0
        for doc in docs:
            if doc.info is None and not self._take_probe(doc, wait=False):
                break  # the pages after it wait for its page count: the stream stays in order
            while doc.todo and submitted < room:
                index = doc.todo.popleft()
                doc.pending.append(_Pending(index, self._submit_page(doc.request, index)))
                submitted += 1
            if submitted >= room:
                break
        return submitted

    def _announce(self, head: _Stream) -> DocumentOpened | DocumentFailed:
        """The head document's ``DocumentOpened`` (waiting for its probe), or why it failed;
        raises what the probe raised."""
        if head.info is None and not self._take_probe(head, wait=True):
            return DocumentFailed(head.request, self._invalid(head.request, head.probe.result()))
        head.announced = True
        return DocumentOpened(head.request, head.info)

    def _take_probe(self, doc: _Stream, *, wait: bool) -> bool:
        """Take a document's probe: whether it opened as asked (its pages are then planned).
        Without ``wait``, False while the probe runs or if it failed (the head reports it)."""
        if not wait and (not doc.probe.done() or doc.probe.exception() is not None):
            return False
        info = doc.probe.result(timeout=self.page_timeout_s)
        self._crashes = 0
        if self._invalid(doc.request, info) is not None:
            return False
        wanted = doc.request.pages
        doc.todo.extend(range(info.page_count) if wanted is None else (n - 1 for n in wanted))
        doc.info = info
        return True

    def _invalid(self, request: RenderRequest, info: DocumentInfo) -> ColqwenError | None:
        """Why a probed document cannot be rendered as requested, if it cannot."""
        if self.max_pages is not None and info.page_count > self.max_pages:
            return PageTooLarge(
                f"{request.name}: {count(info.page_count, 'page')}; the limit is {self.max_pages}"
            )
        missing = [n for n in (request.pages or ()) if not 1 <= n <= info.page_count]
        if missing:
            return InvalidDocument(
                f"{request.name}: no page {missing[0]} (the document has "
                f"{count(info.page_count, 'page')})"
            )
        return None

    def _args(self, request: RenderRequest) -> tuple:
        return request.source, request.name, request.password, self.options

    def _submit_page(self, request: RenderRequest, index: int) -> Future:
        return self._submit(_render, *self._args(request), index, self.shared_memory)

    def _submit(self, fn, *args) -> Future:
        """Submit to the pool; a pool already broken gives a future that raises so, which the
        stream handles as it handles a crash while rendering."""
        # A submit may start a worker: it is born with SIGINT blocked, so a Ctrl-C that reaches
        # the whole process group while it is still importing does not kill it mid-way (with a
        # traceback); its initializer then ignores SIGINT for good.
        with sigint_blocked():
            try:
                return self._executor.submit(fn, *args)
            except BrokenProcessPool as exc:
                future: Future = Future()
                future.set_exception(exc)
                return future

    def _crash_error(
        self, request: RenderRequest, index: int, exc: BaseException
    ) -> InvalidDocument:
        where = f"page {index + 1}" if index >= 0 else "opening it"
        if isinstance(exc, FutureTimeout):
            return InvalidDocument(
                f"{request.name}: rendering {where} took longer than "
                f"{self.page_timeout_s:g} s; the file is likely malformed"
            )
        return InvalidDocument(
            f"{request.name}: the renderer crashed on {where}; the file is likely malformed"
        )

    def _restart(self, docs: Iterable[_Stream]) -> None:
        """Replace a broken or hung pool; resubmit the other documents' probes not taken yet
        and their pages in flight."""
        self._crashes += 1
        if self._crashes > MAX_CONSECUTIVE_CRASHES:
            raise RendererUnavailable(
                f"the render pool crashed {self._crashes} times in a row, on different files: "
                "this looks like a broken environment, not a bad file"
            )
        log.warning("restarting the render pool")
        executor = self._executor
        if isinstance(executor, ProcessPoolExecutor):
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()  # a hung worker would block shutdown forever
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        for doc in docs:
            if doc.info is None:
                doc.probe = self._submit(_probe, *self._args(doc.request))
            for item in doc.pending:
                item.future = self._submit_page(doc.request, item.index)
