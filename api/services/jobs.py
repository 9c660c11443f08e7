"""Jobs as users see them: read, list, events, cancel."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..enums import TERMINAL, JobState, Phase, TaskState
from ..errors import Conflict, Invalid, NotFound
from ..models import Job, JobEvent, Stream, now
from .common import page
from .owners import ADMIN, Caller, owned
from .streams import get_stream
from .tasks import settle_task


def get_job(*, session: Session, job_id: str, caller: Caller) -> Job:
    """A job of a stream `caller` sees (another key's job is "not found", as a missing one)."""
    job = session.scalar(owned(select(Job).join(Stream, Stream.id == Job.stream_id), caller).where(Job.id == job_id))
    if job is None:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return job


def list_jobs(
    *,
    session: Session,
    caller: Caller,
    stream_id: str | None,
    state: str | None,
    after: str | None,
    limit: int,
    newest_first: bool = False,
) -> tuple[list[Job], bool]:
    """The jobs of the streams `caller` sees (the admin: all), of one stream when given, oldest
    first (or newest first)."""
    q = owned(select(Job).join(Stream, Stream.id == Job.stream_id), caller)
    if stream_id is not None:
        q = q.where(Job.stream_id == get_stream(session=session, stream_id=stream_id, caller=caller).id)
    if state is not None:
        if state not in set(JobState):
            raise Invalid(f"unknown state {state!r}; one of {', '.join(JobState)}", param="state")
        q = q.where(Job.state == state)
    return page(session, q, Job.id, after=after, limit=limit, newest_first=newest_first)


def list_events(
    *, session: Session, caller: Caller, job_id: str, after: int | None, limit: int = 100
) -> tuple[list[JobEvent], bool]:
    get_job(session=session, job_id=job_id, caller=caller)
    return page(session, select(JobEvent).where(JobEvent.job_id == job_id), JobEvent.id, after=after, limit=limit)


def event_backlog(*, session: Session, job_id: str, after: int | None) -> tuple[Job, list[JobEvent], int]:
    """What a new live listener starts from: the job, its events after `after`, and an event id
    (0 when none) that every event up to is in the list. Read in that order: a final state implies
    that the events written with it are in the list. The live route checked the caller before."""
    job = get_job(session=session, job_id=job_id, caller=ADMIN)
    last = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    rows = list(session.scalars((q if after is None else q.where(JobEvent.id > after)).order_by(JobEvent.id)))
    return job, rows, int(last or 0)


def live_updates(
    *, session: Session, job_ids: Collection[str], cursors: dict[str, int], limit: int
) -> tuple[dict[str, tuple[str, dict[str, Any]]], list[JobEvent], bool]:
    """One poll for every job somebody follows live: each job's (state, progress), read first,
    then the events after each job's cursor (jobs without a cursor get none), in id order ->
    (states, events, more: the limit cut the events short)."""
    states = {
        r.id: (r.state, r.progress)
        for r in session.execute(select(Job.id, Job.state, Job.progress).where(Job.id.in_(list(job_ids))))
    }
    if not cursors:
        return states, [], False
    q = (
        select(JobEvent)
        .where(JobEvent.job_id.in_(list(cursors)), JobEvent.id > min(cursors.values()))
        .order_by(JobEvent.id)
        .limit(limit)
    )
    rows = list(session.scalars(q))
    return states, [e for e in rows if e.id > cursors[e.job_id]], len(rows) == limit


def cancel_job(*, session: Session, caller: Caller, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops within a
    heartbeat (seconds), leaving the stream at its last committed tree version."""
    job = get_job(session=session, job_id=job_id, caller=caller)
    if job.state in TERMINAL:
        raise Conflict(f"job {job_id} already {job.state}; only queued or running jobs can be cancelled")
    if job.state == JobState.QUEUED:
        job.state, job.finished_at = JobState.CANCELLED, now()
        job.progress = {**job.progress, "phase": Phase.CANCELLED}
        settle_task(session=session, task_id=job.task_id, status=TaskState.CANCELLED)
        session.add(JobEvent(job_id=job.id, type="job.cancelled", data={}))
    else:
        job.cancel_requested = True
        session.add(JobEvent(job_id=job.id, type="job.cancel_requested", data={}))
    session.commit()
    return job
