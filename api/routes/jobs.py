"""Jobs: state and progress, events (a list, or a live Server-Sent Events stream), cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..auth import CallerDep
from ..deps import SessionDep
from ..live import LiveEvents
from ..params import Cursor, EventCursor, JobId, LastEventId, Limit, Order, StateFilter, StreamFilter
from ..schemas import EventOut, JobOut, Page, errors
from ..services import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 422, 503))


@router.get("", response_model=Page[JobOut], responses=errors(404))
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    stream_id: StreamFilter = None,
    state: StateFilter = None,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> Page[JobOut]:
    rows, more = jobs.list_jobs(
        session=session,
        caller=caller,
        stream_id=stream_id,
        state=state,
        after=after,
        limit=limit,
        newest_first=order == "desc",
    )
    return Page(data=[JobOut.of(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobOut:
    return JobOut.of(jobs.get_job(session=session, job_id=job_id, caller=caller))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(404, 409))
def cancel_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobOut:
    return JobOut.of(jobs.cancel_job(session=session, caller=caller, job_id=job_id))


@router.get(
    "/{job_id}/events",
    response_model=Page[EventOut],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "with Accept: text/event-stream"},
        **errors(404),
    },
)
def list_events(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    after: EventCursor = None,
    limit: Limit = 100,
    last_event_id: LastEventId = None,
) -> Page[EventOut] | StreamingResponse:
    if "text/event-stream" in request.headers.get("accept", ""):
        jobs.get_job(session=session, job_id=job_id, caller=caller)  # 404 before the stream starts
        session.close()  # the stream reads in short sessions of its own: hold no connection while it lasts
        start = last_event_id if last_event_id is not None else after
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        live: LiveEvents = request.app.state.live
        return StreamingResponse(live.follow(job_id, start), media_type="text/event-stream", headers=headers)
    rows, more = jobs.list_events(session=session, caller=caller, job_id=job_id, after=after, limit=limit)
    return Page(data=[EventOut.model_validate(r) for r in rows], has_more=more)
