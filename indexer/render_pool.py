"""Parallel rendering: a pool of processes (PDFium is not thread-safe) feeding an ordered stream.

``Renderer.stream(requests)`` takes documents and yields, in order, for each document either
``DocumentOpened`` followed by its ``PageRendered`` events, or a ``DocumentFailed`` with the
reason (possibly after some pages). At most ``2 x workers`` pages are in flight, so memory stays
flat however long the documents. A worker that crashes, runs out of its memory cap or hangs on a
malformed file fails that document only; the pool is rebuilt and the stream goes on.

With ``workers=0`` everything runs in the calling process (no crash isolation).
"""

from __future__ import annotations

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


def _probe(source: Source, name: str, password: str | None, options: RenderOptions) -> DocumentInfo:
    return _guarded(name, lambda: _document(source, name, password, options).info)


def _render(
    source: Source, name: str, password: str | None, options: RenderOptions, index: int
) -> RenderedPage:
    return _guarded(name, lambda: _document(source, name, password, options).render(index))


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
    request: RenderRequest
    index: int  # 0-based page index
    future: Future


class Renderer:
    """A reusable rendering pool. Use as a context manager or call ``close()``."""

    def __init__(
        self,
        options: RenderOptions | None = None,
        *,
        workers: int | None = None,
        page_timeout_s: float = 120.0,
        memory_limit_mb: int | None = 3072,
        max_pages: int | None = None,
    ) -> None:
        self.options = options or RenderOptions()
        self.workers = os.cpu_count() or 1 if workers is None else workers
        self.page_timeout_s = page_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_pages = max_pages
        self._executor = self._new_executor()
        self._crashes = 0  # consecutive pool crashes, reset by any rendered page

    def _new_executor(self):
        if self.workers <= 0:
            return _Inline()
        return child_pool(self.workers, self.memory_limit_mb)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one document --------------------------------------------------------------------------

    def info(self, request: RenderRequest) -> DocumentInfo:
        """Open the document (in a worker) and return its page count; raises on bad input."""
        for event in self._open_all([request]):
            if isinstance(event, DocumentFailed):
                raise event.error
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
        """Events for each document in order; up to ``2 x workers`` pages render ahead."""
        window = max(2, 2 * self.workers)
        # Rendered-page futures and already-known events, in the order they are to be yielded.
        queue: deque[_Pending | RenderEvent] = deque()
        in_flight = 0
        failed: set[RenderRequest] = set()  # identity-hashed (eq=False)
        todo: deque[tuple[RenderRequest, int]] = deque()  # pages of opened documents to submit
        opened = self._open_all(requests)
        while True:
            while in_flight < window:
                if todo:
                    request, index = todo.popleft()
                    if request not in failed:
                        queue.append(_Pending(request, index, self._submit_page(request, index)))
                        in_flight += 1
                    continue
                event = next(opened, None)
                if event is None:
                    break
                queue.append(event)
                if isinstance(event, DocumentOpened):
                    todo.extend((event.request, i) for i in self._indices(event))
            if not queue:
                return
            head = queue.popleft()
            if not isinstance(head, _Pending):
                yield head
                continue
            in_flight -= 1
            if head.request in failed:
                continue
            try:
                page = head.future.result(timeout=self.page_timeout_s)
            except ColqwenError as exc:
                failed.add(head.request)
                yield DocumentFailed(head.request, exc)
                continue
            except (BrokenProcessPool, FutureTimeout) as exc:
                failed.add(head.request)
                yield DocumentFailed(head.request, self._crash_error(head, exc))
                self._restart([item for item in queue if isinstance(item, _Pending)])
                continue
            self._crashes = 0
            yield PageRendered(head.request, page)

    def _indices(self, event: DocumentOpened) -> list[int]:
        count = event.info.page_count
        wanted = event.request.pages
        if wanted is None:
            return list(range(count))
        return [n - 1 for n in wanted if 1 <= n <= count]

    def _open_all(self, requests: Iterable[RenderRequest]) -> Iterator[RenderEvent]:
        for request in requests:
            if request.pages is not None and not request.pages:
                raise ValueError("pages, when given, must name at least one page")
            future = self._submit(
                _probe, request.source, request.name, request.password, self.options
            )
            try:
                info = future.result(timeout=self.page_timeout_s)
                self._crashes = 0
            except ColqwenError as exc:
                yield DocumentFailed(request, exc)
                continue
            except (BrokenProcessPool, FutureTimeout) as exc:
                yield DocumentFailed(request, self._crash_error(_Pending(request, -1, future), exc))
                self._restart([])
                continue
            if self.max_pages is not None and info.page_count > self.max_pages:
                yield DocumentFailed(
                    request,
                    PageTooLarge(
                        f"{request.name}: {info.page_count} pages; the limit is {self.max_pages}"
                    ),
                )
                continue
            missing = [n for n in (request.pages or ()) if not 1 <= n <= info.page_count]
            if missing:
                yield DocumentFailed(
                    request,
                    InvalidDocument(
                        f"{request.name}: no page {missing[0]} (the document has "
                        f"{info.page_count} pages)"
                    ),
                )
                continue
            yield DocumentOpened(request, info)

    def _submit_page(self, request: RenderRequest, index: int) -> Future:
        return self._submit(
            _render, request.source, request.name, request.password, self.options, index
        )

    def _submit(self, fn, *args) -> Future:
        # A submit may start a worker: it is born with SIGINT blocked, so a Ctrl-C that reaches
        # the whole process group while it is still importing does not kill it mid-way (with a
        # traceback); its initializer then ignores SIGINT for good.
        with sigint_blocked():
            return self._executor.submit(fn, *args)

    def _crash_error(self, item: _Pending, exc: BaseException) -> InvalidDocument:
        where = f"page {item.index + 1}" if item.index >= 0 else "opening it"
        if isinstance(exc, FutureTimeout):
            return InvalidDocument(
                f"{item.request.name}: rendering {where} took longer than "
                f"{self.page_timeout_s:g} s; the file is likely malformed"
            )
        return InvalidDocument(
            f"{item.request.name}: the renderer crashed on {where}; the file is likely malformed"
        )

    def _restart(self, pending: list[_Pending]) -> None:
        """Replace a broken or hung pool and resubmit the other documents' pages."""
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
        for item in pending:
            item.future = self._submit_page(item.request, item.index)
