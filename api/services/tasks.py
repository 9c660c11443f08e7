"""Tasks: validate an upload completely, store its splits as content-addressed blobs, then create
the task and its training job in one transaction. A rejected upload stores nothing."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Container

from sqlalchemy import case, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from treelora_core.data import METRICS, Example, parse_records, to_jsonl
from treelora_core.errors import DataError

from ..enums import JobState, Phase, TaskState
from ..errors import Conflict, Invalid, NotFound
from ..models import Job, JobEvent, Stream, Task, new_id
from ..queue import enqueue
from ..settings import Settings
from ..storage import BlobStore
from .common import check_name, page
from .owners import Caller
from .streams import get_stream

log = logging.getLogger(__name__)


def _parse(data: bytes, settings: Settings, param: str) -> list[Example]:
    try:
        return parse_records(data, max_records=settings.max_records, max_chars=settings.max_field_chars)
    except DataError as exc:
        raise Invalid(str(exc), code="invalid_dataset", param=param, line=exc.line) from None


def split_holdout(records: list[Example], settings: Settings) -> tuple[list[Example], list[Example]]:
    """Without an eval file, the last `holdout_fraction` of the records (at most
    `max_eval_examples`) become the eval split: deterministic, and the same on every retry."""
    if len(records) < 10:
        raise Invalid("with no eval_file, a task needs at least 10 examples to hold some out", param="file")
    k = min(max(1, round(len(records) * settings.holdout_fraction)), settings.max_eval_examples)
    return records[:-k], records[-k:]


def submit_task(
    *,
    session: Session,
    settings: Settings,
    store: BlobStore,
    caller: Caller,
    stream_id: str,
    name: str,
    metric: str,
    train: bytes,
    eval_data: bytes | None,
) -> tuple[Task, Job]:
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    check_name(name, reserved=("auto",))  # predict's task "auto" means routing: no task takes the name
    if metric not in METRICS:
        raise Invalid(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", param="metric")
    if session.scalar(select(Task.id).where(Task.stream_id == stream.id, Task.name == name)) is not None:
        raise Conflict(f"stream {stream.name!r} already has a task named {name!r}", param="name")
    records = _parse(train, settings, "file")
    if eval_data is not None:
        evals, source = _parse(eval_data, settings, "eval_file")[: settings.max_eval_examples], "uploaded"
    else:
        records, evals = split_holdout(records, settings)
        source = "holdout"
    train_blob, eval_blob = to_jsonl(records), to_jsonl(evals)
    task = Task(
        id=new_id("tsk"),
        stream_id=stream.id,
        name=name,
        metric=metric,
        train_sha256=hashlib.sha256(train_blob).hexdigest(),
        eval_sha256=hashlib.sha256(eval_blob).hexdigest(),
        n_train=len(records),
        n_eval=len(evals),
        eval_source=source,
        bytes=len(train_blob) + len(eval_blob),
    )
    job = Job(
        id=new_id("job"), stream_id=stream.id, task_id=task.id, state=JobState.QUEUED, progress={"phase": Phase.QUEUED}
    )
    _reserve(session, task, stream.name)
    try:
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, type="job.queued", data={"task": name}))
        session.flush()
        # the blobs before the commit: a committed row never points at a missing object
        for blob, sha in ((train_blob, task.train_sha256), (eval_blob, task.eval_sha256)):
            if store.put(blob) != sha:
                raise OSError("object store returned a different content hash")
        session.commit()
    except BaseException:
        session.rollback()
        raise
    try:
        enqueue(settings, job.id)
        job.enqueued_at = job.created_at
        session.commit()
    except Exception as exc:  # the broker is down: the job stays queued and the sweeper sends it later
        log.warning("could not enqueue %s (%s: %s); the sweeper will send it again", job.id, type(exc).__name__, exc)
    return task, job


def _reserve(session: Session, task: Task, stream_name: str) -> None:
    """Insert the task row, uncommitted, before any blob is written: it holds the name. A
    concurrent upload of the same name waits on the unique constraint and, once this one
    commits, gets a 409 without having written anything; if this one fails, that one goes on."""
    session.add(task)
    try:
        session.flush()  # no ORM relationships: the parent row goes first
    except IntegrityError:
        session.rollback()
        if session.get(Stream, task.stream_id) is None:  # deleted meanwhile (foreign key)
            raise NotFound(f"no stream {stream_name!r}", param="stream_id") from None
        raise Conflict(f"stream {stream_name!r} already has a task named {task.name!r}", param="name") from None


def get_task(*, session: Session, caller: Caller, stream_id: str, task_id: str) -> Task:
    """By id or by name within a stream `caller` sees; an id wins (see `streams.get_stream`)."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    task = session.scalar(
        select(Task)
        .where(Task.stream_id == stream.id, (Task.id == task_id) | (Task.name == task_id))
        .order_by(case((Task.id == task_id, 0), else_=1))
        .limit(1)
    )
    if task is None:
        raise NotFound(f"stream {stream.name!r} has no task {task_id!r}", param="task_id")
    return task


def get_learned_task(
    *,
    session: Session,
    caller: Caller,
    stream_id: str,
    task_id: str,
    param: str = "task_id",
    paths: Container[str] | None = None,
) -> Task:
    """A task the stream has learned. Given a tree version's `paths`, also one that version holds:
    a task that finished after the stream row was read is not in the version read with it."""
    task = get_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    if task.status != TaskState.LEARNED or (paths is not None and task.name not in paths):
        raise NotFound(f"task {task.name!r} is not learned yet (status {task.status})", param=param)
    return task


def learned_tasks(*, session: Session, stream_id: str) -> list[Task]:
    """The stream's learned tasks in the order it learned them (the columns of R)."""
    return list(
        session.scalars(
            select(Task).where(Task.stream_id == stream_id, Task.status == TaskState.LEARNED).order_by(Task.position)
        )
    )


def settle_task(*, session: Session, task_id: str, status: TaskState) -> None:
    """A pending task takes its job's outcome; a learned task stays learned whatever a later job
    does. Committing a version marks its task learned (`runs.commit_version`)."""
    task = session.get(Task, task_id)
    if task is not None and task.status == TaskState.PENDING:
        task.status = status


def list_tasks(
    *, session: Session, caller: Caller, stream_id: str, after: str | None, limit: int
) -> tuple[list[Task], bool]:
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    return page(session, select(Task).where(Task.stream_id == stream.id), Task.id, after=after, limit=limit)
