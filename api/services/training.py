"""A training job's data, apart from the weights: what it learns from (read when it starts) and
what it publishes beside them (its report, each adapter's provenance). `runs` moves the job
through its states; `worker.runner` does the learning in between."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from treelora_core.reports import TaskReport

from ..enums import JobState
from ..models import Adapter, Job, Stream, Task, TreeVersion
from .tasks import learned_tasks
from .trees import get_version


@dataclass
class JobInput:
    """A claimed job's starting point: the stream at its last committed version, the task to
    learn and the tasks learned so far (the new row of R scores them all)."""

    stream: Stream
    task: Task
    base_version: int  # the version the job builds on; its commit fails if the stream moved on
    version: TreeVersion | None  # that version's row; None when the stream has learned nothing
    learned: list[Task]  # in the order the stream learned them


def job_input(*, session: Session, job_id: str) -> JobInput:
    job = session.get(Job, job_id)
    assert job is not None
    stream = session.get(Stream, job.stream_id)
    task = session.get(Task, job.task_id)
    assert stream is not None and task is not None
    return JobInput(
        stream=stream,
        task=task,
        base_version=stream.tree_version,
        version=get_version(session=session, stream=stream),
        learned=learned_tasks(session=session, stream_id=stream.id),
    )


def _finite(x: float) -> float | None:
    """JSON on PostgreSQL refuses NaN and Infinity: a loss that is not a number is null."""
    return round(x, 4) if math.isfinite(x) else None


def job_report(*, report: TaskReport) -> dict[str, Any]:
    """`Job.report` and the `task.learned` event's data."""
    return {
        "seconds": round(report.seconds, 2),
        "epochs_run": report.epochs_run,
        "steps": report.steps,
        "trainable_params": report.trainable_params,
        "final_train_loss": _finite(report.final_train_loss),
        "val_losses": [_finite(v) for v in report.val_losses],  # null: no validation split (NaN)
        "placement": report.placement,
        "phase_seconds": report.phase_seconds,
    }


@dataclass(frozen=True)
class NewAdapter:
    """An adapter of the version a job is about to commit, as the worker knows it."""

    node: str
    block_lo: int
    block_hi: int  # exclusive
    sha256: str
    bytes: int
    trained_by: str | None  # the task whose training created the node (`views.tree_view`'s `created_by`)


def adapter_rows(
    *, session: Session, job_id: str, stream_id: str, base_version: int, adapters: list[NewAdapter]
) -> list[dict[str, Any]]:
    """The version's adapter rows for `runs.commit_version`, each naming the job that trained its
    weights: for weights unchanged since the base version, the job named there; for a node a
    split renamed, the job that learned the task that created it; else this job."""
    before = {
        a.node: a
        for a in session.scalars(
            select(Adapter).where(Adapter.stream_id == stream_id, Adapter.tree_version == base_version)
        )
    }
    learned_by = {  # learned task name -> the job that learned it
        name: jid
        for name, jid in session.execute(
            select(Task.name, Job.id)
            .join(Job, Job.task_id == Task.id)
            .where(Task.stream_id == stream_id, Job.state == JobState.SUCCEEDED)
        )
    }
    rows = []
    for a in adapters:
        prev = before.get(a.node)
        if prev is not None and prev.sha256 == a.sha256:
            created_by = prev.created_by
        elif a.trained_by is not None and a.trained_by in learned_by:
            created_by = learned_by[a.trained_by]
        else:
            created_by = job_id
        rows.append(
            {
                "node": a.node,
                "block_lo": a.block_lo,
                "block_hi": a.block_hi,
                "sha256": a.sha256,
                "bytes": a.bytes,
                "created_by": created_by,
            }
        )
    return rows
