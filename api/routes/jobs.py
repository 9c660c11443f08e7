"""Jobs: state and progress, events (a list, or a live Server-Sent Events stream), cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from ..db import session_factory
from ..deps import SessionDep
from ..enums import TERMINAL
from ..models import Job
from ..schemas import EventOut, JobOut, Page
from ..services import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Limit = Annotated[int, Query(ge=1, le=100)]
SSE_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0


@router.get("", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    stream_id: str | None = None,
    state: str | None = None,
    after: str | None = None,
    limit: Limit = 20,
) -> Page[JobOut]:
    rows, more = jobs.list_jobs(session=session, stream_id=stream_id, state=state, after=after, limit=limit)
    return Page(data=[JobOut.of(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    return JobOut.of(jobs.get_job(session=session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    return JobOut.of(jobs.cancel_job(session=session, job_id=job_id))


def _sse(event_id: int | None, type_: str, data: object) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {type_}\ndata: {json.dumps(data, default=str)}\n\n"


def _stream(db_url: str, job_id: str, after: int | None) -> Iterator[str]:
    """New events as they are written, a `progress` event when progress changes; ends after
    the job reaches a final state."""
    factory = session_factory(db_url)
    last_progress, last_beat = None, time.monotonic()
    while True:
        with factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            rows, _ = jobs.list_events(session=session, job_id=job_id, after=after, limit=100)
            done = job.state in TERMINAL
            progress = {"state": job.state, **job.progress}
        for ev in rows:
            after = ev.id
            yield _sse(ev.id, ev.type, EventOut.model_validate(ev).model_dump(mode="json"))
        if progress != last_progress:
            last_progress = progress
            yield _sse(None, "progress", progress)
        if done and not rows:
            return
        if time.monotonic() - last_beat > SSE_KEEPALIVE_S:
            last_beat = time.monotonic()
            yield ": keep-alive\n\n"
        if not rows:
            time.sleep(SSE_POLL_S)


@router.get(
    "/{job_id}/events",
    response_model=Page[EventOut],
    responses={200: {"content": {"text/event-stream": {}}, "description": "with Accept: text/event-stream"}},
)
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    after: int | None = None,
    limit: Limit = 100,
    last_event_id: Annotated[int | None, Header()] = None,
) -> Page[EventOut] | StreamingResponse:
    if "text/event-stream" in request.headers.get("accept", ""):
        jobs.get_job(session=session, job_id=job_id)  # 404 before the stream starts
        start = last_event_id if last_event_id is not None else after
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _stream(request.app.state.settings.db_url, job_id, start), media_type="text/event-stream", headers=headers
        )
    rows, more = jobs.list_events(session=session, job_id=job_id, after=after, limit=limit)
    return Page(data=[EventOut.model_validate(r) for r in rows], has_more=more)
