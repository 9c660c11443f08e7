"""What can be served, and by which name: a predict request names a stream and a task (or
`auto`); an OpenAI-compatible request names a model, `"<stream>"` or `"<stream>:auto"` (routing)
or `"<stream>:<task>"` (that task's path), the stream and the task by name or id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..enums import TaskState
from ..errors import NotFound
from ..models import Stream, Task
from .lifecycle import check_servable, retired_names
from .owners import Caller, owned
from .streams import get_stream
from .tasks import get_learned_task

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # a stream's or a task's name or id (common.NAME)
MODEL = re.compile(rf"({_NAME})(?::({_NAME}))?")
MODEL_HELP = '"<stream>", "<stream>:auto" or "<stream>:<task>" (GET /v1/models lists them)'


@dataclass(frozen=True)
class Target:
    """A stream (its `tree_version` is the version the request is served on), the task to answer
    with (a name, or "auto") and the retired tasks, which auto routing leaves out."""

    stream: Stream
    task: str
    retired: frozenset[str]


def target(*, session: Session, caller: Caller, stream_id: str, task: str, param: str = "task") -> Target:
    """Stream (one `caller` sees) and task by name or id; a task not learned is 404 and a retired
    one 410, naming `param`."""
    stream = get_stream(session=session, caller=caller, stream_id=stream_id)
    if task != "auto":
        learned = get_learned_task(session=session, caller=caller, stream_id=stream.id, task_id=task, param=param)
        task = check_servable(learned, param=param).name
    return Target(stream, task, retired_names(session=session, stream_id=stream.id))


def parse_model(model: str) -> tuple[str, str]:
    """`"<stream>[:<task>]"` -> (stream, task or "auto"); a name that cannot name anything is
    `model_not_found`, before any lookup."""
    m = MODEL.fullmatch(model)
    if m is None:
        raise NotFound(f"no model {model!r}: a model is {MODEL_HELP}", code="model_not_found", param="model")
    return m[1], m[2] or "auto"


def resolve_model(*, session: Session, caller: Caller, model: str) -> Target:
    stream_id, task = parse_model(model)
    try:
        return target(session=session, caller=caller, stream_id=stream_id, task=task, param="model")
    except NotFound as exc:
        raise NotFound(f"no model {model!r}: {exc.message}", code="model_not_found", param="model") from None


def _model(name: str, created: datetime, stream: Stream, task: str | None) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": stream.owner,
        "treelora": {
            "stream": stream.id,
            "task": task,
            "base_model": stream.base_model,
            "tree_version": stream.tree_version,
        },
    }


def list_models(*, session: Session, caller: Caller) -> list[dict[str, Any]]:
    """Each stream `caller` sees (auto routing), then each of its learned tasks that is not
    retired, as OpenAI model objects (`owned_by`: the stream's owner; `treelora`: the stream's
    id, the task, base model, tree version)."""
    streams = list(session.scalars(owned(select(Stream), caller).order_by(Stream.id)))
    tasks: dict[str, list[Task]] = {}
    query = select(Task).join(Stream, Stream.id == Task.stream_id)
    query = owned(query, caller).where(Task.status == TaskState.LEARNED, Task.retired_at.is_(None))
    for t in session.scalars(query.order_by(Task.position)):
        tasks.setdefault(t.stream_id, []).append(t)
    out = []
    for s in streams:
        out.append(_model(s.name, s.created_at, s, None))
        out += [_model(f"{s.name}:{t.name}", t.created_at, s, t.name) for t in tasks.get(s.id, [])]
    return out


def get_model(*, session: Session, caller: Caller, model: str) -> dict[str, Any]:
    found = resolve_model(session=session, caller=caller, model=model)
    stream, task = found.stream, None if found.task == "auto" else found.task
    if task is None:
        return _model(model, stream.created_at, stream, None)
    row = get_learned_task(session=session, caller=caller, stream_id=stream.id, task_id=task)
    return _model(model, row.created_at, stream, task)
