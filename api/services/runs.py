"""A job's life on the worker side: claim (with the stream lock and a lease), heartbeat, finish.

Every transition is a conditional UPDATE, so it is atomic on PostgreSQL and on SQLite alike:
- the stream lock is `streams.active_job_id`, taken only by the stream's oldest unfinished job
  and only when free or held by a job that finished or lost its lease;
- a job is claimed when queued; each claim bumps `attempt` and names a new `lease_owner`, so a
  stale worker's writes match no row;
- a running job whose lease ran out (its worker died) is reported with a `job.worker_lost` event
  and re-queued (or failed after MAX_ATTEMPTS), once, by the first sweeper or claim that sees it;
- the result commits in one transaction that first checks the lease and the base tree version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Update, exists, or_, select, update
from sqlalchemy.orm import Session

from ..enums import ACTIVE, TERMINAL, JobState, Outcome, Phase, TaskState
from ..errors import Conflict
from ..models import Adapter, Evaluation, Job, JobEvent, Stream, Task, TreeVersion, now
from ..settings import Settings
from .tasks import settle_task

MAX_ATTEMPTS = 3


def _changed(session: Session, stmt: Update) -> int:
    """Rows an UPDATE changed: how a conditional transition tells whether it happened."""
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


@dataclass
class Claim:
    outcome: Outcome  # CLAIMED, WAIT (the stream is busy: try later) or SKIP (finished or owned)
    job: Job | None = None


def _event(session: Session, job_id: str, type_: str, data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data or {}))


def claim(*, session: Session, job_id: str, owner: str, lease_s: float) -> Claim:
    t = now()
    job = session.get(Job, job_id)
    if job is None or job.state in TERMINAL:
        return Claim(Outcome.SKIP)
    expired = job.lease_expires_at is not None and job.lease_expires_at < t
    if job.state in ACTIVE and not expired:
        return Claim(Outcome.SKIP)
    if job.state in ACTIVE and worker_lost(session=session, job=job, t=t) != JobState.QUEUED:
        return Claim(Outcome.SKIP)  # failed (too many attempts), or another process got there first
    if job.attempt >= MAX_ATTEMPTS:
        fail(
            session=session, job_id=job_id, owner=None, code="worker_lost", message="the job lost its worker too often"
        )
        return Claim(Outcome.SKIP)
    earlier = session.scalar(
        select(Job.id).where(Job.stream_id == job.stream_id, Job.id < job.id, Job.state.not_in(TERMINAL)).limit(1)
    )
    if earlier is not None:
        job.enqueued_at = t  # its retry message is in flight: the sweeper need not send another
        session.commit()
        return Claim(Outcome.WAIT)
    holder_gone = exists().where(Job.id == Stream.active_job_id, or_(Job.state.in_(TERMINAL), Job.lease_expires_at < t))
    got_lock = _changed(
        session,
        update(Stream)
        .where(
            Stream.id == job.stream_id,
            or_(Stream.active_job_id.is_(None), Stream.active_job_id == job.id, holder_gone),
        )
        .values(active_job_id=job.id),
    )
    if not got_lock:
        session.rollback()
        job.enqueued_at = t
        session.commit()
        return Claim(Outcome.WAIT)
    claimed = _changed(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == JobState.QUEUED,
        )
        .values(
            state=JobState.RUNNING,
            lease_owner=owner,
            lease_expires_at=t + timedelta(seconds=lease_s),
            attempt=Job.attempt + 1,
            started_at=t,
            progress={"phase": Phase.LOADING},
        ),
    )
    if not claimed:
        session.rollback()
        return Claim(Outcome.SKIP)
    session.commit()
    session.refresh(job)
    _event(session, job_id, "job.started", {"attempt": job.attempt, "worker": owner})
    session.commit()
    return Claim(Outcome.CLAIMED, job)


def heartbeat(
    *,
    session: Session,
    job_id: str,
    owner: str,
    lease_s: float,
    progress: dict[str, Any] | None = None,
    state: JobState | None = None,
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
) -> tuple[bool, bool]:
    """Renew the lease, store progress (and a new state); -> (still ours, cancel requested)."""
    values: dict[str, Any] = {"lease_expires_at": now() + timedelta(seconds=lease_s)}
    if progress is not None:
        values["progress"] = progress
    if state is not None:
        values["state"] = state
    ours = _changed(
        session, update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state.in_(ACTIVE)).values(**values)
    )
    if ours:
        for type_, data in events:
            _event(session, job_id, type_, data)
    session.commit()
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return bool(ours), cancel


def _finish(
    session: Session, job_id: str, owner: str | None, state: JobState, values: dict[str, Any], *where: Any
) -> bool:
    """End an unfinished job in `state` (with `owner`, only while it holds the lease; and while
    `where` holds), release its stream's lock and settle its task."""
    cond = [Job.id == job_id, Job.state.not_in(TERMINAL), *where]
    if owner is not None:
        cond.append(Job.lease_owner == owner)
    done = _changed(session, update(Job).where(*cond).values(state=state, finished_at=now(), **values))
    if done:
        job = session.get(Job, job_id)
        assert job is not None
        _changed(
            session,
            update(Stream).where(Stream.id == job.stream_id, Stream.active_job_id == job_id).values(active_job_id=None),
        )
        settle_task(session=session, task_id=job.task_id, status=TaskState(state))
    return bool(done)


def fail(*, session: Session, job_id: str, owner: str | None, code: str, message: str) -> bool:
    """Record an error; the stream stays at its last committed tree version."""
    ok = _finish(
        session,
        job_id,
        owner,
        JobState.FAILED,
        {"error_code": code, "error_message": message[:2000], "progress": {"phase": Phase.FAILED}},
    )
    if ok:
        _event(session, job_id, "job.failed", {"code": code, "message": message[:2000]})
    session.commit()
    return ok


def cancelled(*, session: Session, job_id: str, owner: str) -> bool:
    ok = _finish(session, job_id, owner, JobState.CANCELLED, {"progress": {"phase": Phase.CANCELLED}})
    if ok:
        _event(session, job_id, "job.cancelled", {})
    session.commit()
    return ok


def commit_version(
    *,
    session: Session,
    job_id: str,
    owner: str,
    base_version: int,
    manifest: dict[str, Any],
    tree: dict[str, Any],
    similarity: dict[str, Any],
    paths: dict[str, Any],
    adapters: list[dict[str, Any]],
    scores: dict[str, float],
    eval_seconds: float,
    report: dict[str, Any],
) -> int:
    """Publish a job's result atomically: the tree version, its adapters, the new row of R, the
    task and the job; blobs were written before. Raises Conflict when the lease was lost or the
    stream moved on since the job loaded it; then nothing is written."""
    job = session.get(Job, job_id)
    assert job is not None
    version = base_version + 1
    ours = _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state.in_(ACTIVE))
        .values(
            state=JobState.SUCCEEDED,
            result_version=version,
            finished_at=now(),
            report=report,
            progress={**job.progress, "phase": Phase.DONE},
        ),
    )
    moved = _changed(
        session,
        update(Stream)
        .where(Stream.id == job.stream_id, Stream.tree_version == base_version, Stream.active_job_id == job_id)
        .values(tree_version=version, active_job_id=None),
    )
    if not ours or not moved:
        session.rollback()
        raise Conflict("the job lost its lease or the stream changed while it trained; nothing was committed")
    session.add(
        TreeVersion(
            stream_id=job.stream_id,
            version=version,
            manifest=manifest,
            tree=tree,
            similarity=similarity,
            paths=paths,
            created_by=job_id,
        )
    )
    session.flush()
    session.add_all(Adapter(stream_id=job.stream_id, tree_version=version, **a) for a in adapters)
    session.add(
        Evaluation(stream_id=job.stream_id, tree_version=version, job_id=job_id, scores=scores, seconds=eval_seconds)
    )
    task = session.get(Task, job.task_id)
    assert task is not None
    task.status, task.position = TaskState.LEARNED, version
    _event(session, job_id, "job.succeeded", {"tree_version": version, "scores": scores})
    session.commit()
    return version


def worker_lost(*, session: Session, job: Job, t: datetime) -> JobState | None:
    """A job whose lease ran out (its worker died or stopped renewing): record `job.worker_lost`
    and put it back in the queue, or fail it with `worker_lost` once it has had MAX_ATTEMPTS.
    A conditional UPDATE on the lost lease makes it happen once, whoever sees it first (a sweeper
    or a claim) -> the job's new state, or None when the lease was renewed or already handled."""
    owner, expired_at, attempt = job.lease_owner, job.lease_expires_at, job.attempt
    lost = (Job.state.in_(ACTIVE), Job.lease_owner == owner, Job.lease_expires_at < t)
    data = {"attempt": attempt, "worker": owner, "lease_expired_at": expired_at.isoformat() if expired_at else None}
    if attempt < MAX_ATTEMPTS:
        state = JobState.QUEUED
        done = _changed(
            session,
            update(Job)
            .where(Job.id == job.id, *lost)
            .values(
                state=state, lease_owner=None, lease_expires_at=None, enqueued_at=t, progress={"phase": Phase.QUEUED}
            ),
        )
    else:
        state = JobState.FAILED
        message = f"the job lost its worker {attempt} times"
        values = {"error_code": "worker_lost", "error_message": message, "progress": {"phase": Phase.FAILED}}
        done = _finish(session, job.id, owner, state, values, *lost)
    if not done:
        session.rollback()
        return None
    _event(session, job.id, "job.worker_lost", {**data, "then": state})
    if state == JobState.FAILED:
        _event(session, job.id, "job.failed", {"code": "worker_lost", "message": message})
    session.commit()
    session.refresh(job)
    return state


def sweep(*, session: Session, settings: Settings) -> list[str]:
    """Jobs to send again: the jobs whose lease ran out (their worker died: each is reported with
    `job.worker_lost` and re-queued, or failed after MAX_ATTEMPTS), and queued ones never (or
    long ago) sent. The claim decides what actually runs, so a resend is safe."""
    t = now()
    ids = []
    for job in list(session.scalars(select(Job).where(Job.state.in_(ACTIVE), Job.lease_expires_at < t))):
        if worker_lost(session=session, job=job, t=t) == JobState.QUEUED:
            ids.append(job.id)
    stale = t - timedelta(seconds=settings.requeue_after_s)
    q = select(Job).where(Job.state == JobState.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale))
    jobs = list(session.scalars(q))
    for job in jobs:
        job.enqueued_at = t
    session.commit()
    return ids + [j.id for j in jobs]


def unsent(*, session: Session, job_ids: list[str]) -> None:
    """The broker refused these jobs (`sweep` had marked them sent): mark the queued ones never
    sent, so the next sweep tries them again rather than after `requeue_after_s`."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids), Job.state == JobState.QUEUED).values(enqueued_at=None))
        session.commit()
