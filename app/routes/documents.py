"""Documents: upload (queued for ingestion), list, get, delete, page images."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.deps import ServicesDep
from app.errors import PayloadTooLarge
from app.schemas import DocumentPublic, DocumentsPublic, ErrorBody, UploadAccepted
from app.services import Services
from indexer.render import RenderOptions, open_document, sniff
from indexer.worker import uploads_dir
from retrieval.errors import InvalidInput, NotFound, UnsupportedFormat
from retrieval.store import parse_filter
from retrieval.types import DocumentRecord

router = APIRouter(
    prefix="/v1/documents", tags=["documents"], responses={422: {"model": ErrorBody}}
)
CollectionQuery = Annotated[
    str | None, Query(min_length=1, max_length=64, description="Default: COLQWEN_COLLECTION.")
]
_CHUNK = 1 << 20


def document_public(doc: DocumentRecord, collection: str) -> DocumentPublic:
    data = asdict(doc)
    data.pop("source_path", None)
    return DocumentPublic(collection=collection, **data)


@router.post(
    "",
    status_code=202,
    response_model=UploadAccepted,
    responses={
        200: {"model": DocumentPublic, "description": "Already indexed: the document."},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
async def upload_document(
    request: Request,
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="A PDF, or a PNG/JPEG/TIFF/WebP image.")],
    metadata: Annotated[
        str | None, Form(description="A JSON object kept with the document.")
    ] = None,
    password: Annotated[str | None, Form(description="Password of an encrypted PDF.")] = None,
    collection: Annotated[str | None, Form(min_length=1, max_length=64)] = None,
):
    """Store the upload durably and queue it for ingestion (202 with the job); an identical,
    already indexed file answers 200 with its document."""
    settings = services.settings
    limit = settings.max_upload_mb * 1024 * 1024
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + 1024 * 1024:  # multipart overhead aside
        raise PayloadTooLarge(
            f"upload is {declared / 2**20:.0f} MB; the limit is {settings.max_upload_mb} MB"
        )
    collection = collection or settings.collection
    meta = _parse_metadata(metadata)
    name = Path(file.filename or "upload").name
    path, doc_id = await run_in_threadpool(_save_upload, file, uploads_dir(settings), limit, name)
    existing = await run_in_threadpool(_indexed, services, collection, doc_id)
    if existing is not None:
        return JSONResponse(
            document_public(existing, collection).model_dump(mode="json"), status_code=200
        )
    job = await run_in_threadpool(services.jobs.active_for, doc_id, collection)
    if job is None:
        job = await run_in_threadpool(
            lambda: services.jobs.create(
                doc_id=doc_id,
                collection=collection,
                name=name,
                path=path,
                metadata=meta,
                password=password,
            )
        )
    return UploadAccepted(
        job_id=job.id,
        doc_id=doc_id,
        status=job.status,
    )


def _parse_metadata(metadata: str | None) -> dict:
    if not metadata:
        return {}
    try:
        value = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    return value


def _save_upload(file: UploadFile, folder: Path, limit: int, name: str) -> tuple[Path, str]:
    """Stream to disk while hashing; refuse oversize and unknown types. Returns (path, sha256)."""
    tmp_dir = folder / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with open(tmp, "wb") as out:
            while block := file.file.read(_CHUNK):
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(f"{name}: larger than the {limit // 2**20} MB limit")
                if len(head) < 1024:
                    head += block[: 1024 - len(head)]
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise InvalidInput(f"{name}: the file is empty")
        kind = sniff(head)
        if kind is None:
            raise UnsupportedFormat(f"{name}: not a PDF nor a PNG, JPEG, TIFF or WebP image")
        doc_id = digest.hexdigest()
        final = folder / f"{doc_id}.{'pdf' if kind == 'pdf' else 'img'}"
        os.replace(tmp, final)  # content-addressed: the same bytes land on the same file
        return final, doc_id
    finally:
        tmp.unlink(missing_ok=True)


def _indexed(services: Services, collection: str, doc_id: str) -> DocumentRecord | None:
    try:
        doc = services.store.document(collection, doc_id)
    except NotFound:
        return None
    return doc if doc.status == "indexed" else None


@router.get(
    "",
    response_model=DocumentsPublic,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def list_documents(
    services: ServicesDep,
    collection: CollectionQuery = None,
    filter: Annotated[
        str | None, Query(description='JSON, e.g. {"metadata": {"team": "finance"}}')
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentsPublic:
    """Documents of a collection, oldest first, optionally filtered on metadata."""
    collection = collection or services.settings.collection
    try:
        spec = json.loads(filter) if filter else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"filter is not valid JSON: {exc}") from None
    where = parse_filter(spec)
    docs = await run_in_threadpool(services.store.documents, collection, where)
    return DocumentsPublic(
        data=[document_public(d, collection) for d in docs[offset : offset + limit]],
        count=len(docs),
    )


@router.get("/{doc_id}", response_model=DocumentPublic, responses={404: {"model": ErrorBody}})
async def get_document(
    doc_id: str, services: ServicesDep, collection: CollectionQuery = None
) -> DocumentPublic:
    collection = collection or services.settings.collection
    return document_public(
        await run_in_threadpool(services.store.document, collection, doc_id), collection
    )


@router.delete("/{doc_id}", status_code=204, responses={404: {"model": ErrorBody}})
async def delete_document(
    doc_id: str, services: ServicesDep, collection: CollectionQuery = None
) -> Response:
    """Delete every page of the document and its record."""
    collection = collection or services.settings.collection
    await run_in_threadpool(services.store.delete_document, collection, doc_id)
    return Response(status_code=204)


@router.get(
    "/{doc_id}/pages/{page}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
async def page_image(
    doc_id: str,
    page: int,
    services: ServicesDep,
    collection: CollectionQuery = None,
    width: Annotated[
        int | None, Query(ge=16, le=4096, description="Thumbnail width in pixels.")
    ] = None,
) -> Response:
    """The page as the model saw it (PNG), rendered from the stored original."""
    collection = collection or services.settings.collection
    png = await run_in_threadpool(_render_png, services, collection, doc_id, page, width)
    return Response(png, media_type="image/png")


def _render_png(
    services: Services, collection: str, doc_id: str, page: int, width: int | None
) -> bytes:
    doc = services.store.document(collection, doc_id)
    if not 1 <= page <= doc.page_count:
        raise NotFound(f"document '{doc_id}' has no page {page} ({doc.page_count} pages)")
    path = Path(doc.source_path) if doc.source_path else None
    if path is None or not path.is_file():
        raise NotFound(f"the original file of '{doc.name}' is no longer at {doc.source_path}")
    options = RenderOptions(
        max_visual_tokens=services.store.collection(collection).max_visual_tokens
    )
    with services.render_lock, open_document(path, name=doc.name, options=options) as document:
        image = document.render(page - 1).image
    if width and width < image.width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
