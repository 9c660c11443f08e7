"""Read-only summaries for the web page: every stream with its task counts, a stream's latest jobs
with their task names, newest first. One query each, so a page stays fast with many tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..enums import TERMINAL
from ..models import Job, Stream, Task
from .owners import Caller, owned
from .streams import get_stream


@dataclass
class StreamSummary:
    stream: Stream
    tasks: dict[str, int] = field(default_factory=dict)  # task status -> count

    @property
    def n_tasks(self) -> int:
        return sum(self.tasks.values())


def stream_summaries(*, session: Session, caller: Caller, limit: int = 200) -> list[StreamSummary]:
    """The newest `limit` streams `caller` sees, newest first, with their tasks counted by status."""
    streams = list(session.scalars(owned(select(Stream), caller).order_by(Stream.id.desc()).limit(limit)))
    out = {s.id: StreamSummary(s) for s in streams}
    if out:
        counts = session.execute(
            select(Task.stream_id, Task.status, func.count())
            .where(Task.stream_id.in_(list(out)))
            .group_by(Task.stream_id, Task.status)
        )
        for stream_id, status, n in counts:
            out[stream_id].tasks[status] = n
    return list(out.values())


@dataclass
class JobRow:
    job: Job
    task_name: str

    @property
    def finished(self) -> bool:
        return self.job.state in TERMINAL


def recent_jobs(*, session: Session, caller: Caller, stream_id: str, limit: int = 50) -> list[JobRow]:
    """The stream's latest `limit` jobs, newest first, each with its task's name."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    rows = session.execute(
        select(Job, Task.name)
        .join(Task, Task.id == Job.task_id)
        .where(Job.stream_id == stream.id)
        .order_by(Job.id.desc())
        .limit(limit)
    )
    return [JobRow(job, name) for job, name in rows]
