"""Ingestion jobs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.schemas import JobPublic, errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(422))


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404))
async def get_job(job_id: str, services: ServicesDep) -> JobPublic:
    """State of an ingestion job: queued, running, done or failed, with page progress."""
    return JobPublic(**(await run_in_threadpool(services.jobs.get, job_id)).public())
