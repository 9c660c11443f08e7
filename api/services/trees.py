"""Reading committed tree versions: the tree, a task's path, similar tasks, the adapter registry
and the accuracy matrix R with its continual-learning metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import Adapter, Evaluation, Stream, Task, TreeVersion
from .lifecycle import retired_names
from .owners import Caller
from .streams import get_stream
from .tasks import get_learned_task, learned_tasks

UNCALIBRATED_THRESHOLD = 0.5  # a version saved before routing confidence was calibrated


def get_version(*, session: Session, stream: Stream, version: int | None = None) -> TreeVersion | None:
    """A committed version of the stream (default: its latest); None for version 0 (nothing learned)."""
    v = stream.tree_version if version is None else version
    if v < 0 or v > stream.tree_version:
        raise NotFound(f"stream {stream.name!r} has versions 0..{stream.tree_version}", param="version")
    return session.scalar(select(TreeVersion).where(TreeVersion.stream_id == stream.id, TreeVersion.version == v))


def tree(*, session: Session, caller: Caller, stream_id: str, version: int | None = None) -> dict[str, Any]:
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
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


def router(
    *, session: Session, caller: Caller, stream_id: str, version: int | None = None, min_confidence: float | None = None
) -> dict[str, Any]:
    """A committed version's task router (default: the latest): its tasks, the retired ones that
    auto routing leaves out, and how its confidence is made. `calibration` holds the figures
    measured when the version was made, on held-out training prompts of its tasks (cross-fitted:
    see `treelora_core.router`): how many, how many the router sent to another task, the
    expected calibration error and the AUROC of confidence for right against wrong routes, and
    the share of each that `low_confidence` flags at the router's threshold. `threshold` is what
    `low_confidence` uses when a request gives no `min_confidence`: `min_confidence` (the
    service's setting) if set, else the router's."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    tv = get_version(session=session, stream=stream, version=version)
    manifest = tv.manifest if tv is not None else {}
    tasks = list(manifest.get("router", []))
    cal = manifest.get("router_calibration")
    if len(tasks) < 2:
        confidence, own = "single_task", None  # one task or none: every route is right
    elif cal:
        confidence, own = "calibrated", float(cal["threshold"])
    else:
        confidence, own = "uncalibrated", UNCALIBRATED_THRESHOLD  # a softmax share, as saved then
    return {
        "stream_id": stream.id,
        "version": tv.version if tv is not None else 0,
        "latest_version": stream.tree_version,
        "strategy": stream.strategy,
        "tasks": tasks,
        "retired": sorted(retired_names(session=session, stream_id=stream.id) & set(tasks)),
        "confidence": confidence,
        "threshold": min_confidence if min_confidence is not None else own,
        "threshold_source": "settings" if min_confidence is not None else "router",
        "calibration": None
        if not cal
        else {
            **cal["figures"],
            "threshold": float(cal["threshold"]),
            "features": [f"{cal['views'][v]}.{f}" for v, f in cal["features"]],
            # the view routes are picked by (saved before the discriminant view: the prototypes)
            "route_view": cal.get("route_view", "prototypes"),
        },
    }


def versions(*, session: Session, caller: Caller, stream_id: str) -> list[dict[str, Any]]:
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    rows = session.scalars(select(TreeVersion).where(TreeVersion.stream_id == stream.id).order_by(TreeVersion.version))
    return [
        {"version": r.version, "created_by": r.created_by, "created_at": r.created_at, "tasks": list(r.paths)}
        for r in rows
    ]


def learned(*, session: Session, caller: Caller, stream_id: str, task_id: str) -> tuple[Stream, Task, TreeVersion]:
    """A learned task with its stream and the stream's latest version, which holds its path."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    tv = get_version(session=session, stream=stream)
    task = get_learned_task(
        session=session, caller=caller, stream_id=stream.id, task_id=task_id, paths=tv.paths if tv else {}
    )
    assert tv is not None  # with no version, no task is learned: the call above raised
    return stream, task, tv


def task_path(*, session: Session, caller: Caller, stream_id: str, task_id: str) -> dict[str, Any]:
    _stream, task, tv = learned(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    return {"task": task.name, "task_id": task.id, "tree_version": tv.version, "segments": tv.paths[task.name]}


def similar(*, session: Session, caller: Caller, stream_id: str, task_id: str, limit: int = 10) -> dict[str, Any]:
    _stream, task, tv = learned(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    sims = tv.similarity.get(task.name, {})
    ranked = sorted(sims.items(), key=lambda kv: -kv[1])[:limit]
    return {"task": task.name, "tree_version": tv.version, "similar": [{"task": n, "similarity": s} for n, s in ranked]}


def adapters(*, session: Session, caller: Caller, stream_id: str, version: int | None = None) -> list[Adapter]:
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
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


def evaluations(*, session: Session, caller: Caller, stream_id: str) -> dict[str, Any]:
    """R[t][i]: score (%) on task i after the stream's t-th version; OP, BWT and forgetting. A
    score a job could not compute (the task's stored eval split was missing or corrupt: its
    `evaluation.skipped` event) is null in R, listed in `missing`, and left out of the metrics."""
    stream = get_stream(session=session, stream_id=stream_id, caller=caller)
    rows = list(
        session.scalars(select(Evaluation).where(Evaluation.stream_id == stream.id).order_by(Evaluation.tree_version))
    )
    tasks = [t.name for t in learned_tasks(session=session, stream_id=stream.id)]
    # square: R[t][i] is None for tasks learned after version t+1 (they did not exist yet)
    R = [[r.scores.get(t) if i <= k else None for i, t in enumerate(tasks)] for k, r in enumerate(rows)]
    missing = [
        {"tree_version": r.tree_version, "task": t}
        for k, r in enumerate(rows)
        for i, t in enumerate(tasks)
        if i <= k and R[k][i] is None
    ]
    return {
        "stream_id": stream.id,
        "tasks": tasks,
        "R": R,
        "rows": [
            {"tree_version": r.tree_version, "job_id": r.job_id, "scores": r.scores, "seconds": r.seconds} for r in rows
        ],
        "missing": missing,
        **_metrics(R, tasks),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _metrics(R: list[list[float | None]], tasks: list[str]) -> dict[str, Any]:
    """OP, BWT (GEM sign) and forgetting as `treelora_core.metrics.summarize` computes them, over
    the scores present: a null entry drops the terms that need it."""
    if not R:
        return {"op": None, "bwt": None, "forgetting": None, "forgetting_per_task": {}}
    T, last = len(R), R[-1]
    op = _mean([v for v in last if v is not None])
    bwt: list[float] = []
    forgetting: list[float] = []
    per_task: dict[str, float] = {}
    for i in range(T - 1):
        final, first = last[i], R[i][i]
        if final is None:
            continue
        if first is not None:
            bwt.append(final - first)
        before = [v for t in range(i, T - 1) if (v := R[t][i]) is not None]
        if before:
            forgetting.append(max(before) - final)
        per_task[tasks[i]] = round(max([*before, final]) - final, 2)
    return {
        "op": op,
        "bwt": _mean(bwt) if T > 1 else 0.0,
        "forgetting": _mean(forgetting) if T > 1 else 0.0,
        "forgetting_per_task": per_task,
    }
