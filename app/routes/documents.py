"""Documents: upload (queued for ingestion), list, get, delete, page images."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.deps import ServicesDep
from app.schemas import DocumentPublic, DocumentsPublic, UploadAccepted, errors
from app.uploads import OPENAPI_BODY, receive_upload
from indexer.heatmap import draw_match, png
from retrieval.search import MAX_QUERY_CHARS
from retrieval.store import COLLECTION_PATTERN, check_metadata, parse_filter_json
from retrieval.store.filters import parse_json
from retrieval.types import DocumentRecord

router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=errors(400, 422))
CollectionQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=COLLECTION_PATTERN,
        description="Default: COLQWEN_COLLECTION.",
    ),
]
WidthQuery = Annotated[
    int | None, Query(ge=16, le=4096, description="Image width in pixels (a thumbnail).")
]
PRIVATE_FIELDS = ("source_path", "password_sealed")


async def resolved_doc_id(
    doc_id: Annotated[
        str, Path(description="The document's id, or its first characters (at least 4).")
    ],
    services: ServicesDep,
    collection: CollectionQuery = None,
) -> str:
    """The full id of the document the path names: commands show the first 12 characters of
    ids, and any prefix that names one document is accepted, as the CLI accepts it."""
    if len(doc_id) == 64:
        return doc_id  # read as it is: a queued upload has no record to match a prefix yet
    collection = collection or services.settings.collection
    return (await run_in_threadpool(services.store.find_document, collection, doc_id)).doc_id


DocId = Annotated[str, Depends(resolved_doc_id)]


def document_public(doc: DocumentRecord, collection: str) -> DocumentPublic:
    data = asdict(doc)
    for name in PRIVATE_FIELDS:
        data.pop(name, None)
    return DocumentPublic(collection=collection, **data)


@router.post(
    "",
    status_code=202,
    response_model=UploadAccepted,
    openapi_extra={"requestBody": OPENAPI_BODY},
    responses={
        200: {"model": DocumentPublic, "description": "Already indexed: the document."},
        **errors(409, 413, 415),
    },
)
async def upload_document(request: Request, services: ServicesDep):
    """Store the upload durably and queue it for ingestion (202 with the job); an identical,
    already indexed file answers 200 with its document. Form fields: ``file`` (required),
    ``metadata`` (a JSON object), ``password`` (of an encrypted PDF), ``collection``.

    A body over ``COLQWEN_MAX_UPLOAD_MB`` is refused (413) as soon as its declared length or its
    streamed bytes pass the limit."""
    settings = services.settings
    received = await receive_upload(
        request,
        services.documents.uploads,
        settings.max_upload_mb * 2**20,
        idle_s=settings.upload_idle_s,
        min_bytes_s=settings.upload_min_kb_s * 1024,
    )
    fields = received.fields
    collection = fields.get("collection", settings.collection)
    try:
        metadata = _parse_metadata(fields.get("metadata"))
    except BaseException:
        await run_in_threadpool(services.documents.release_upload, received.upload.doc_id)
        raise
    accepted = await run_in_threadpool(
        lambda: services.documents.accept(
            received.upload,
            collection=collection,
            name=received.filename,
            metadata=metadata,
            password=fields.get("password") or None,
            model=settings.model,
        )
    )
    if accepted.document is not None:
        return JSONResponse(
            document_public(accepted.document, collection).model_dump(mode="json"),
            status_code=200,
        )
    job = accepted.job
    return UploadAccepted(job_id=job.id, doc_id=job.doc_id, status=job.status)


def _parse_metadata(metadata: str | None) -> dict:
    return check_metadata(parse_json(metadata, what="metadata")) if metadata else {}


@router.get("", response_model=DocumentsPublic, responses=errors(404))
async def list_documents(
    services: ServicesDep,
    collection: CollectionQuery = None,
    filter: Annotated[
        str | None,
        Query(
            description='A filter as JSON text, e.g. {"metadata": {"team": "finance"}}',
            json_schema_extra={"contentMediaType": "application/json"},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentsPublic:
    """Documents of a collection, oldest first, optionally filtered on metadata."""
    collection = collection or services.settings.collection
    where = parse_filter_json(filter)
    docs = await run_in_threadpool(services.store.documents, collection, where)
    return DocumentsPublic(
        data=[document_public(d, collection) for d in docs[offset : offset + limit]],
        count=len(docs),
    )


@router.get("/{doc_id}", response_model=DocumentPublic, responses=errors(404))
async def get_document(
    doc_id: DocId, services: ServicesDep, collection: CollectionQuery = None
) -> DocumentPublic:
    collection = collection or services.settings.collection
    return document_public(
        await run_in_threadpool(services.store.document, collection, doc_id), collection
    )


@router.delete("/{doc_id}", status_code=204, responses=errors(404))
async def delete_document(
    doc_id: DocId, services: ServicesDep, collection: CollectionQuery = None
) -> Response:
    """Delete the document for good: its pages, its record and its kept original. An ingestion
    still running for it is cancelled, and what it stored is removed."""
    collection = collection or services.settings.collection
    await run_in_threadpool(services.documents.delete, collection, doc_id)
    return Response(status_code=204)


@router.get(
    "/{doc_id}/pages/{page}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        304: {"description": "Not modified."},
        **errors(404),
    },
)
async def page_image(
    doc_id: DocId,
    page: int,
    request: Request,
    services: ServicesDep,
    collection: CollectionQuery = None,
    width: WidthQuery = None,
) -> Response:
    """The page as the model saw it (PNG), rendered from the stored original. Cached by
    clients with an ETag: a document's id is its content's hash, so its pages never change."""
    collection = collection or services.settings.collection
    info = await run_in_threadpool(services.store.collection, collection)
    tag = (
        '"'
        + hashlib.sha256(
            f"{collection}/{doc_id}/{page}/{width}/{info.family}/{info.max_visual_tokens}".encode()
        ).hexdigest()[:32]
        + '"'
    )
    headers = {"ETag": tag, "Cache-Control": "private, max-age=86400"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)

    def render() -> bytes:
        return png(services.documents.page_image(collection, doc_id, page, width=width))

    return Response(await run_in_threadpool(render), media_type="image/png", headers=headers)


@router.get(
    "/{doc_id}/pages/{page}/heatmap",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 409, 429, 503)},
)
async def page_heatmap(
    doc_id: DocId,
    page: int,
    services: ServicesDep,
    query: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
    collection: CollectionQuery = None,
    token: Annotated[
        int | None,
        Query(
            ge=0,
            description="One query token's map (its index in the query's tokens); "
            "default: the combined map.",
        ),
    ] = None,
    width: WidthQuery = None,
) -> Response:
    """The page with the similarity map of ``query`` drawn over it (PNG): bright where the
    page's patches match the query's tokens best. From the stored vectors."""

    def render() -> bytes:
        image, _ = draw_match(
            services.searcher(),
            services.documents,
            query,
            doc_id,
            page,
            collection=collection,
            token=token,
            width=width,
        )
        return png(image)

    return Response(
        await run_in_threadpool(render),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )
