"""Jobs as users see them: read, list, events, cancel."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..enums import TERMINAL, JobState, Phase, TaskState
from ..errors import Conflict, Invalid, NotFound
from ..models import Job, JobEvent, now
from .common import page
from .streams import get_stream
from .tasks import settle_task


def get_job(*, session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return job


def list_jobs(
    *, session: Session, stream_id: str | None, state: str | None, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    q = select(Job)
    if stream_id is not None:
        q = q.where(Job.stream_id == get_stream(session=session, stream_id=stream_id).id)
    if state is not None:
        if state not in set(JobState):
            raise Invalid(f"unknown state {state!r}; one of {', '.join(JobState)}", param="state")
        q = q.where(Job.state == state)
    return page(session, q, Job.id, after=after, limit=limit)


def list_events(*, session: Session, job_id: str, after: int | None, limit: int = 100) -> tuple[list[JobEvent], bool]:
    get_job(session=session, job_id=job_id)
    return page(session, select(JobEvent).where(JobEvent.job_id == job_id), JobEvent.id, after=after, limit=limit)


def cancel_job(*, session: Session, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops within a
    heartbeat (seconds), leaving the stream at its last committed tree version."""
    job = get_job(session=session, job_id=job_id)
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
