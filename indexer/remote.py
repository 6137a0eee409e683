"""Ingest through a running service (``colqwen ingest --server URL``) instead of opening the
store: upload each file, then follow the jobs until they end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from indexer.pipeline import DocumentResult, IngestProgress, IngestReport
from indexer.sources import SourceFile, sha256_file, sidecar_metadata
from retrieval.errors import ColqwenError, StoreError


@dataclass
class _Pending:
    source: SourceFile
    job_id: str
    doc_id: str
    pages_done: int = 0
    pages_total: int = 0


def ingest_remote(
    server: str,
    sources: list[SourceFile],
    *,
    collection: str | None = None,
    api_key: str | None = None,
    poll_s: float = 0.5,
    on_progress: Callable[[IngestProgress], None] | None = None,
    timeout_s: float = 600.0,
) -> IngestReport:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    progress = IngestProgress(files_total=len(sources))
    results: list[DocumentResult] = []
    pending: list[_Pending] = []
    with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        for source in sources:
            try:
                metadata = {**source.metadata, **sidecar_metadata(source.path)}
                doc_id, _ = sha256_file(source.path)
            except ColqwenError as exc:
                results.append(DocumentResult(source.name, None, "failed", error=str(exc)))
                continue
            form = {"metadata": json.dumps(metadata)}
            if collection:
                form["collection"] = collection
            if source.password:
                form["password"] = source.password
            with open(source.path, "rb") as f:
                response = _call(
                    client.post, "/v1/documents", files={"file": (source.name, f)}, data=form
                )
            body = response.json()
            if response.status_code == 200:
                results.append(DocumentResult(source.name, doc_id, "skipped", body["page_count"]))
            elif response.status_code == 202:
                pending.append(_Pending(source, body["job_id"], body["doc_id"]))
            else:
                detail = (
                    body.get("detail", response.text) if isinstance(body, dict) else response.text
                )
                results.append(
                    DocumentResult(source.name, doc_id, "failed", error=f"{source.name}: {detail}")
                )
        progress.files_done = len(results)
        while pending:
            still = []
            for item in pending:
                job = _call(client.get, f"/v1/jobs/{item.job_id}").json()
                item.pages_done, item.pages_total = job["pages_done"], job["pages_total"] or 0
                if job["status"] == "done":
                    results.append(
                        DocumentResult(
                            item.source.name,
                            item.doc_id,
                            "indexed",
                            item.pages_total,
                            item.pages_done,
                        )
                    )
                elif job["status"] == "failed":
                    results.append(
                        DocumentResult(item.source.name, item.doc_id, "failed", error=job["error"])
                    )
                else:
                    still.append(item)
            pending = still
            progress.files_done = len(results)
            progress.failed = sum(r.status == "failed" for r in results)
            progress.pages_done = sum(r.embedded for r in results) + sum(
                p.pages_done for p in pending
            )
            progress.pages_total = sum(r.embedded for r in results) + sum(
                p.pages_total for p in pending
            )
            if on_progress:
                on_progress(progress)
            if pending:
                time.sleep(poll_s)
    return IngestReport(results, time.perf_counter() - start, {})


def _call(method, url: str, **kwargs) -> httpx.Response:
    try:
        response = method(url, **kwargs)
    except httpx.HTTPError as exc:
        raise StoreError(f"cannot reach the service: {exc}") from None
    if response.status_code == 401:
        raise StoreError("the service refused the API key: pass --api-key")
    if response.status_code >= 500:
        raise StoreError(f"the service failed ({response.status_code}): {response.text[:300]}")
    return response
