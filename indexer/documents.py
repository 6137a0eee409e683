"""The life of an uploaded document, in one place for the API, the CLI and the worker: accept
an upload, delete a document (for good, even while it is being ingested), render a page image
from the kept original, and remove originals nothing refers to any more."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.jobs import Job, JobQueue
from indexer.render import RenderOptions, open_document, page_texts
from indexer.secrets import Sealer
from indexer.uploads import StoredUpload, UploadFolder
from retrieval.errors import Conflict, NotFound
from retrieval.models import recorded
from retrieval.store import PageStore
from retrieval.store.model import Filter, Match
from retrieval.store.schema import check_name
from retrieval.types import CollectionInfo, DocumentRecord
from retrieval.words import count

log = logging.getLogger(__name__)

DELETED = "the document was deleted"


@dataclass
class Accepted:
    """What an upload became: an already indexed document, or a job (new or already queued)."""

    document: DocumentRecord | None = None
    job: Job | None = None


class DocumentService:
    def __init__(
        self, store: PageStore, jobs: JobQueue, uploads: UploadFolder, sealer: Sealer
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.uploads = uploads
        self.sealer = sealer
        self._pdfium = threading.Lock()  # PDFium is not thread-safe: one render at a time
        self._uploads_lock = threading.Lock()

    def accept(
        self,
        upload: StoredUpload,
        *,
        collection: str,
        name: str,
        metadata: dict[str, Any],
        password: str | None,
        model: str | None = None,
    ) -> Accepted:
        """Queue a stored upload for ingestion, unless it is indexed or queued already.

        Refused before it is queued: a bad collection name, a collection built with another
        model than ``model`` (the one that would ingest it: refuse the upload, not fail its
        job), the same file again with other metadata (``Conflict``, not silently kept with
        the first metadata: its pages carry that metadata). A refused upload, and one indexed
        already, is not kept."""
        try:
            check_name(collection)
            if model is not None:
                from retrieval.checkpoint import identify

                self.store.check_model(collection, identify(model), action="upload into")
            accepted = self._accept(upload, collection, name, metadata, password)
        except BaseException:
            self.release_upload(upload.doc_id)  # nothing refers to a refused upload
            raise
        if accepted.document is not None:
            self.release_upload(upload.doc_id)
        return accepted

    def _accept(
        self,
        upload: StoredUpload,
        collection: str,
        name: str,
        metadata: dict[str, Any],
        password: str | None,
    ) -> Accepted:
        existing = self._document(collection, upload.doc_id)
        if existing is not None and existing.status == "indexed":
            _check_same_metadata(name, metadata, existing.metadata, "is already indexed")
            return Accepted(document=existing)
        with self._uploads_lock:  # not while a concurrent delete decides to remove the file
            if not upload.path.is_file():
                raise Conflict(f"{name}: the same file was deleted meanwhile; upload it again")
            job = self.jobs.active_for(upload.doc_id, collection)
            if job is not None:
                queued = f"is already being ingested (job {job.id})"
                _check_same_metadata(name, metadata, job.metadata, queued)
            else:
                job = self.jobs.create(
                    doc_id=upload.doc_id,
                    collection=collection,
                    name=name,
                    path=upload.path,
                    metadata=metadata,
                    password=self.sealer.seal(password),
                )
        return Accepted(job=job)

    def delete(self, collection: str, doc_id: str) -> None:
        """Delete a document's pages, record and kept original. A job still ingesting it is
        cancelled first; its worker stops and deletes whatever it stored meanwhile."""
        doc = self._document(collection, doc_id)
        if doc is not None and doc.status != "deleting":
            # Marked first: a crash from here on is finished by ``recover`` at the next start.
            doc.status = "deleting"
            self.store.put_document(collection, doc)
        cancelled = self.jobs.cancel_for(doc_id, collection, DELETED)
        if doc is None and not cancelled:
            self.store.document(collection, doc_id)  # NotFound, with the reason
        self.forget(collection, doc_id)

    def recover(self, *, sweep_uploads: bool) -> None:
        """Finish what a killed process left half done: deletes it had begun, jobs cancelled
        under a worker that died before cleaning up, and (``sweep_uploads``, when no other
        process can be mid-upload) originals that no job or document refers to."""
        for info in self.store.collections():
            deleting = self.store.documents(info.name, Filter((Match("status", "deleting"),)))
            for doc in deleting:
                log.info("finishing the deletion of %s from '%s'", doc.name, info.name)
                self.delete(info.name, doc.doc_id)
        for doc_id, collection in self.jobs.cancelled_last():
            doc = self._document(collection, doc_id)
            if doc is not None:
                log.info("deleting %s from '%s': its ingestion was cancelled", doc.name, collection)
                self.forget(collection, doc_id)
            else:
                # Deleted while its job ran: the pipeline may have stored pages after the
                # delete, and its worker died before removing them. No record: no live page.
                self._delete_pages(collection, doc_id)
        if sweep_uploads:
            for doc_id in self.uploads.doc_ids():
                self.release_upload(doc_id)
        if pruned := self.uploads.prune_copies():
            log.info("removed %d copies of originals deleted through other hosts", pruned)

    def forget(self, collection: str, doc_id: str) -> None:
        """Undo what a cancelled job stored: called by its worker once the pipeline stopped."""
        try:
            self.store.delete_document(collection, doc_id)
        except NotFound:
            self._delete_pages(collection, doc_id)
        self.release_upload(doc_id)

    def _delete_pages(self, collection: str, doc_id: str) -> None:
        with contextlib.suppress(NotFound):  # nor the collection, then
            self.store.delete_pages(collection, doc_id)

    def release_upload(self, doc_id: str) -> bool:
        """Remove the kept original of ``doc_id`` unless a job or a live document needs it."""
        with self._uploads_lock:
            if not self.uploads.has(doc_id) or self.jobs.references(doc_id):
                return False
            for info in self.store.collections():
                doc = self._document(info.name, doc_id)
                live = doc is not None and doc.status != "failed"
                if live and self.uploads.holds(doc.source_path):
                    return False
            removed = self.uploads.remove(doc_id)
        if removed:
            log.info("removed the original upload of %s", doc_id[:12])
        return removed

    def original(self, doc_id: str, path: str | Path | None) -> Path | None:
        """The file of ``doc_id``'s original on this host, or None if it is gone: a kept
        upload (``path`` in the uploads folder of whichever host accepted it: fetched from the
        database the first time, in a distributed deployment), else the user's own file at
        ``path`` (``colqwen ingest``)."""
        if self.uploads.holds(path):
            return self.uploads.path_of(doc_id)
        found = Path(path) if path else None
        return found if found is not None and found.is_file() else None

    def page_image(
        self, collection: str, doc_id: str, page: int, *, width: int | None = None
    ) -> Image.Image:
        """The page as the model saw it, rendered from the kept original."""
        doc = self.store.document(collection, doc_id)
        if not 1 <= page <= doc.page_count:
            raise NotFound(
                f"document '{doc_id}' has no page {page} ({count(doc.page_count, 'page')})"
            )
        path = self.original(doc.doc_id, doc.source_path)
        if path is None:
            raise NotFound(f"the original file of '{doc.name}' is no longer at {doc.source_path}")
        info = self.store.collection(collection)
        options = RenderOptions(
            max_visual_tokens=info.max_visual_tokens, family=recorded(info.family, info.geometry)
        )
        password = self.sealer.unseal(doc.password_sealed, name=doc.name)
        with (
            self._pdfium,
            open_document(path, name=doc.name, password=password, options=options) as document,
        ):
            image = document.render(page - 1).image
        if width and width < image.width:
            image = image.resize((width, max(1, round(image.height * width / image.width))))
        return image

    def upgrade_collection(
        self, name: str, progress: Callable[[int, int], None] | None = None
    ) -> CollectionInfo | None:
        """Bring collection ``name`` made by an older version to the current schema
        (``PageStore.upgrade_collection``), its pages' text read again from the kept
        originals; None when it has the current schema already (an upgrade stopped after its
        switch is finished then)."""
        info = self.store.collection(name)
        if info.first_stage == "fde" and info.text and info.pooling[:1] != ("buckets",):
            self.store.upgrade_collection(name)
            return None
        return self.store.upgrade_collection(
            name, progress=progress, page_text=self.text_reader(name)
        )

    def text_reader(self, collection: str) -> Callable[[str, int], str]:
        """``page_text(doc_id, page)`` from the kept originals, for giving an old collection
        its text (``PageStore.upgrade_collection``); "" where the original is gone. Pages come
        in any order: each document's texts are read once and the last 64 kept."""

        @lru_cache(maxsize=64)
        def texts(doc_id: str) -> tuple[str, ...]:
            doc = self._document(collection, doc_id)
            path = self.original(doc_id, doc.source_path) if doc else None
            if path is None:
                log.warning("no original for %s: its pages get no text", doc_id[:12])
                return ()
            password = self.sealer.unseal(doc.password_sealed, name=doc.name)
            with self._pdfium:
                return tuple(page_texts(path, password))

        def page_text(doc_id: str, page: int) -> str:
            found = texts(doc_id)
            return found[page - 1] if 0 < page <= len(found) else ""

        return page_text

    def _document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        try:
            return self.store.document(collection, doc_id)
        except NotFound:
            return None


def _check_same_metadata(name: str, given: dict, kept: dict, where: str) -> None:
    """``Conflict`` when an upload of a file already accepted brings other metadata."""
    if given and given != kept:
        raise Conflict(
            f"{name}: this file {where} with other metadata ({json.dumps(kept)[:200]}); "
            "delete the document first to upload it with new metadata"
        )
