"""Reading committed tree versions: the tree, a task's path, similar tasks, the adapter registry
and the accuracy matrix R with its continual-learning metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from treelora_core.metrics import summarize

from ..errors import Invalid, NotFound
from ..models import Adapter, Evaluation, Stream, Task, TreeVersion
from .streams import get_stream
from .tasks import get_learned_task, learned_tasks


def get_version(*, session: Session, stream: Stream, version: int | None = None) -> TreeVersion | None:
    """A committed version of the stream (default: its latest); None for version 0 (nothing learned)."""
    v = stream.tree_version if version is None else version
    if v < 0 or v > stream.tree_version:
        raise NotFound(f"stream {stream.name!r} has versions 0..{stream.tree_version}", param="version")
    return session.scalar(select(TreeVersion).where(TreeVersion.stream_id == stream.id, TreeVersion.version == v))


def tree(*, session: Session, stream_id: str, version: int | None = None) -> dict[str, Any]:
    stream = get_stream(session=session, stream_id=stream_id)
    tv = get_version(session=session, stream=stream, version=version)
    if tv is None:
        return {
            "stream_id": stream.id,
            "version": 0,
            "strategy": stream.strategy,
            "blocks": None,
            "nodes": [],
            "similarity": {},
            "created_by": None,
            "created_at": None,
            "latest_version": stream.tree_version,
        }
    shas = {
        a.node: a
        for a in session.scalars(
            select(Adapter).where(Adapter.stream_id == stream.id, Adapter.tree_version == tv.version)
        )
    }
    nodes = [{**n, "adapter_sha256": shas[n["id"]].sha256 if n["id"] in shas else None} for n in tv.tree["nodes"]]
    return {
        "stream_id": stream.id,
        "version": tv.version,
        "strategy": tv.tree["strategy"],
        "blocks": tv.tree["blocks"],
        "nodes": nodes,
        "similarity": tv.similarity,
        "created_by": tv.created_by,
        "created_at": tv.created_at,
        "latest_version": stream.tree_version,
    }


def versions(*, session: Session, stream_id: str) -> list[dict[str, Any]]:
    stream = get_stream(session=session, stream_id=stream_id)
    rows = session.scalars(select(TreeVersion).where(TreeVersion.stream_id == stream.id).order_by(TreeVersion.version))
    return [
        {"version": r.version, "created_by": r.created_by, "created_at": r.created_at, "tasks": list(r.paths)}
        for r in rows
    ]


def learned(*, session: Session, stream_id: str, task_id: str) -> tuple[Stream, Task, TreeVersion]:
    """A learned task with its stream and the stream's latest version, which holds its path."""
    stream = get_stream(session=session, stream_id=stream_id)
    tv = get_version(session=session, stream=stream)
    task = get_learned_task(session=session, stream_id=stream.id, task_id=task_id, paths=tv.paths if tv else {})
    assert tv is not None  # with no version, no task is learned: the call above raised
    return stream, task, tv


def task_path(*, session: Session, stream_id: str, task_id: str) -> dict[str, Any]:
    _stream, task, tv = learned(session=session, stream_id=stream_id, task_id=task_id)
    return {"task": task.name, "task_id": task.id, "tree_version": tv.version, "segments": tv.paths[task.name]}


def similar(*, session: Session, stream_id: str, task_id: str, limit: int = 10) -> dict[str, Any]:
    _stream, task, tv = learned(session=session, stream_id=stream_id, task_id=task_id)
    sims = tv.similarity.get(task.name, {})
    ranked = sorted(sims.items(), key=lambda kv: -kv[1])[:limit]
    return {"task": task.name, "tree_version": tv.version, "similar": [{"task": n, "similarity": s} for n, s in ranked]}


def adapters(*, session: Session, stream_id: str, version: int | None = None) -> list[Adapter]:
    stream = get_stream(session=session, stream_id=stream_id)
    tv = get_version(session=session, stream=stream, version=version)
    if tv is None:
        return []
    return list(
        session.scalars(
            select(Adapter)
            .where(Adapter.stream_id == stream.id, Adapter.tree_version == tv.version)
            .order_by(Adapter.node)
        )
    )


def evaluations(*, session: Session, stream_id: str) -> dict[str, Any]:
    """R[t][i]: score (%) on task i after the stream's t-th version; OP, BWT and forgetting."""
    stream = get_stream(session=session, stream_id=stream_id)
    rows = list(
        session.scalars(select(Evaluation).where(Evaluation.stream_id == stream.id).order_by(Evaluation.tree_version))
    )
    tasks = [t.name for t in learned_tasks(session=session, stream_id=stream.id)]
    # square: R[t][i] is None for tasks learned after version t+1 (they did not exist yet)
    R = [[r.scores.get(t) if i <= k else None for i, t in enumerate(tasks)] for k, r in enumerate(rows)]
    out: dict[str, Any] = {
        "stream_id": stream.id,
        "tasks": tasks,
        "R": R,
        "rows": [
            {"tree_version": r.tree_version, "job_id": r.job_id, "scores": r.scores, "seconds": r.seconds} for r in rows
        ],
    }
    if not R:
        return {**out, "op": None, "bwt": None, "forgetting": None, "forgetting_per_task": {}}
    try:
        s = summarize(R)
    except ValueError as exc:
        raise Invalid(f"stored evaluations are incomplete: {exc}") from None
    T = len(R)
    per_task = {tasks[i]: round(max(R[t][i] for t in range(i, T)) - R[-1][i], 2) for i in range(T - 1)}  # type: ignore[type-var, operator]
    return {
        **out,
        "op": round(s["op"] or 0.0, 2),
        "bwt": round(s["bwt_gem"] or 0.0, 2),
        "forgetting": round(s["forgetting"] or 0.0, 2),
        "forgetting_per_task": per_task,
    }
