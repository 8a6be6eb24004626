"""Jobs: list, status, cancel, resume and progress as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from tokenprism.backend.api.service import ServiceDep, protected_router
from tokenprism.backend.store.records import TERMINAL, list_jobs

router = protected_router()


@router.get("/jobs", summary="Recent jobs")
def jobs(
    svc: ServiceDep,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    return {"jobs": list_jobs(svc.store, limit=limit, status=status)}


@router.get("/jobs/{job_id}", summary="Job status, progress, ETA and error")
def job(job_id: str, svc: ServiceDep) -> dict[str, Any]:
    return svc.jobs.status(job_id)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel(job_id: str, svc: ServiceDep) -> dict[str, Any]:
    return svc.jobs.cancel(job_id)


@router.post("/jobs/{job_id}/resume", summary="Resume an interrupted, failed or cancelled job")
def resume(job_id: str, svc: ServiceDep) -> dict[str, Any]:
    return svc.jobs.resume(job_id)


@router.get("/jobs/{job_id}/events", summary="Progress as server-sent events")
async def job_events(job_id: str, request: Request, svc: ServiceDep) -> StreamingResponse:
    svc.jobs.status(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last = None
        while not await request.is_disconnected():
            state = await asyncio.to_thread(svc.jobs.status, job_id)
            payload = json.dumps(state, default=str)
            if payload != last:
                yield f"event: progress\ndata: {payload}\n\n"
                last = payload
            if state["status"] in (*TERMINAL, "interrupted"):
                yield f"event: end\ndata: {payload}\n\n"
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream")
