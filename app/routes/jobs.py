"""Ingestion jobs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import ErrorBody, JobPublic
from indexer.jobs import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={422: {"model": ErrorBody}})


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        job_id=job.id,
        doc_id=job.doc_id,
        collection=job.collection,
        name=job.name,
        status=job.status,
        pages_done=job.pages_done,
        pages_total=job.pages_total,
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"model": ErrorBody}})
async def get_job(job_id: str, services: ServicesDep) -> JobPublic:
    """State of an ingestion job: queued, running, done or failed, with page progress."""
    return job_public(await run_in_threadpool(services.jobs.get, job_id))
