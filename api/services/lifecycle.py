"""The end of a stream and of a task's service: deleting a stream (its rows, then the blobs no
other stream names) and retiring a task from serving (it stays in the tree and in R)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..enums import TERMINAL, TaskState
from ..errors import Conflict, Gone
from ..models import Adapter, Evaluation, Job, JobEvent, Stream, Task, TreeVersion, now
from ..storage import BlobStore
from .blobs import delete_unreferenced, referenced
from .owners import Caller
from .streams import get_stream
from .tasks import get_task


@dataclass
class StreamDeleted:
    id: str
    name: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    blobs_deleted: int = 0
    blobs_shared: int = 0  # still named by another stream's rows: kept
    blobs_young: int = 0  # younger than the grace period: kept for `python -m api.gc`


def delete_stream(
    *, session: Session, store: BlobStore, caller: Caller, stream_id: str, grace_s: float
) -> StreamDeleted:
    """Delete a stream whose jobs have all finished: its rows in one transaction, then the blobs
    they named that no other row names and that are older than `grace_s` seconds. A stream with
    a queued or running job is a Conflict (`stream_busy`): cancel the jobs first."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    # PostgreSQL: a task being submitted meanwhile waits for this transaction (its row's foreign
    # key locks the stream row), then fails; SQLite serialises writers anyway
    session.execute(select(Stream.id).where(Stream.id == stream.id).with_for_update())
    busy = list(
        session.scalars(
            select(Job.id).where(Job.stream_id == stream.id, Job.state.not_in(TERMINAL)).order_by(Job.id).limit(11)
        )
    )
    if busy:
        session.rollback()
        more = ", ..." if len(busy) > 10 else ""
        raise Conflict(
            f"stream {stream.name!r} has unfinished jobs ({', '.join(busy[:10])}{more}): cancel them first",
            code="stream_busy",
            param="stream_id",
        )
    own = referenced(session=session, stream_id=stream.id)
    jobs = select(Job.id).where(Job.stream_id == stream.id).scalar_subquery()
    statements: list[tuple[str, Delete]] = [
        ("job_events", delete(JobEvent).where(JobEvent.job_id.in_(jobs))),
        ("evaluations", delete(Evaluation).where(Evaluation.stream_id == stream.id)),
        ("adapters", delete(Adapter).where(Adapter.stream_id == stream.id)),
        ("tree_versions", delete(TreeVersion).where(TreeVersion.stream_id == stream.id)),
        ("jobs", delete(Job).where(Job.stream_id == stream.id)),
        ("tasks", delete(Task).where(Task.stream_id == stream.id)),
        ("streams", delete(Stream).where(Stream.id == stream.id)),
    ]
    out = StreamDeleted(id=stream.id, name=stream.name)
    try:
        for table, stmt in statements:
            out.rows[table] = cast(CursorResult[Any], session.execute(stmt)).rowcount
        session.commit()
    except IntegrityError:  # a row of the stream appeared meanwhile (SQLite): nothing was deleted
        session.rollback()
        raise Conflict(
            f"stream {stream.name!r} changed while it was being deleted; try again", code="stream_busy"
        ) from None
    swept = delete_unreferenced(session=session, store=store, shas=own, grace_s=grace_s)
    out.blobs_deleted, out.blobs_shared, out.blobs_young = len(swept.deleted), swept.referenced, swept.young
    return out


def retire_task(*, session: Session, caller: Caller, stream_id: str, task_id: str) -> Task:
    """Retire a learned task from serving: predict and score by its id or name are 410, auto
    routing never picks it, its adapter is not exported; it stays in the tree and in R (later
    jobs still score it). Retiring a retired task changes nothing."""
    task = get_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    if task.status != TaskState.LEARNED:
        raise Conflict(
            f"task {task.name!r} is {task.status}: only a learned task can be retired",
            code="not_learned",
            param="task_id",
        )
    if task.retired_at is None:
        task.retired_at = now()
        session.commit()
    return task


def unretire_task(*, session: Session, caller: Caller, stream_id: str, task_id: str) -> Task:
    """Serve a retired task again."""
    task = get_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    if task.retired_at is not None:
        task.retired_at = None
        session.commit()
    return task


def check_servable(task: Task, *, param: str = "task") -> Task:
    """`task` unless it is retired (then Gone, `task_retired`)."""
    if task.retired_at is not None:
        raise Gone(
            f"task {task.name!r} was retired from serving at {task.retired_at.isoformat()}",
            code="task_retired",
            param=param,
        )
    return task


def retired_names(*, session: Session, stream_id: str) -> frozenset[str]:
    """The names of the stream's retired tasks: auto routing leaves them out."""
    return frozenset(
        session.scalars(select(Task.name).where(Task.stream_id == stream_id, Task.retired_at.is_not(None)))
    )
