"""The tree, paths, similar tasks, the adapter registry, evaluations and predictions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from ..auth import CallerDep
from ..deps import InferenceDep, SessionDep, SettingsDep
from ..params import StreamRef, TaskRef, Version
from ..schemas import AdapterOut, PredictIn, PredictOut, ScoreIn, ScoreOut, errors
from ..services import lifecycle, streams, trees
from ..services.owners import Caller
from ..services.tasks import get_learned_task
from ..streaming import SSE_HEADERS, predict_events

router = APIRouter(prefix="/v1/streams/{stream_id}", tags=["tree"], responses=errors(401, 404, 422, 503))


@router.get("/tree")
def get_tree(stream_id: StreamRef, session: SessionDep, caller: CallerDep, version: Version = None) -> dict[str, Any]:
    return trees.tree(session=session, caller=caller, stream_id=stream_id, version=version)


@router.get("/router")
def get_router(
    stream_id: StreamRef, session: SessionDep, settings: SettingsDep, caller: CallerDep, version: Version = None
) -> dict[str, Any]:
    """The task router of a version: its tasks, its routing confidence's calibration and the
    default `low_confidence` threshold."""
    return trees.router(
        session=session,
        caller=caller,
        stream_id=stream_id,
        version=version,
        min_confidence=settings.route_min_confidence,
    )


@router.get("/tree/versions")
def list_versions(stream_id: StreamRef, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    return {"data": trees.versions(session=session, caller=caller, stream_id=stream_id), "has_more": False}


@router.get("/tasks/{task_id}/path")
def task_path(stream_id: StreamRef, task_id: TaskRef, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    return trees.task_path(session=session, caller=caller, stream_id=stream_id, task_id=task_id)


@router.get("/tasks/{task_id}/similar")
def similar_tasks(
    stream_id: StreamRef,
    task_id: TaskRef,
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    return trees.similar(session=session, caller=caller, stream_id=stream_id, task_id=task_id, limit=limit)


@router.get("/adapters")
def list_adapters(
    stream_id: StreamRef, session: SessionDep, caller: CallerDep, version: Version = None
) -> dict[str, Any]:
    rows = trees.adapters(session=session, caller=caller, stream_id=stream_id, version=version)
    return {"data": [AdapterOut.model_validate(a).model_dump(mode="json") for a in rows], "has_more": False}


@router.get(
    "/tasks/{task_id}/adapter",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "PEFT adapter folder as .tar.gz"},
        **errors(410),
    },
)
def download_adapter(
    stream_id: StreamRef, task_id: TaskRef, session: SessionDep, inference: InferenceDep, caller: CallerDep
) -> Response:
    stream, task, tv = trees.learned(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    lifecycle.check_servable(task, param="task_id")
    data = inference.adapter_archive(stream, tv, task.name)
    headers = {
        "Content-Disposition": f'attachment; filename="{task.name}-v{tv.version}-peft.tar.gz"',
        "X-Tree-Version": str(tv.version),
    }
    return Response(data, media_type="application/gzip", headers=headers)


@router.get("/evaluations")
def evaluations(stream_id: StreamRef, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    return trees.evaluations(session=session, caller=caller, stream_id=stream_id)


def _resolve(session: SessionDep, caller: Caller, stream_id: str, task: str) -> tuple[Any, str, frozenset[str]]:
    """The stream (its `tree_version` is the version this request is served on), the task (410
    when retired) and the retired tasks, which auto routing leaves out."""
    stream = streams.get_stream(session=session, caller=caller, stream_id=stream_id)
    if task != "auto":
        learned = get_learned_task(session=session, caller=caller, stream_id=stream.id, task_id=task, param="task")
        task = lifecycle.check_servable(learned, param="task").name
    retired = lifecycle.retired_names(session=session, stream_id=stream.id)
    session.close()  # generation can take a while: do not hold a connection
    return stream, task, retired


@router.post(
    "/predict",
    response_model=PredictOut,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "with stream: true (docs/service.md)"},
        **errors(409, 410, 413),
    },
)
def predict(
    stream_id: StreamRef, body: PredictIn, session: SessionDep, inference: InferenceDep, caller: CallerDep
) -> Any:
    stream, task, retired = _resolve(session, caller, stream_id, body.task)
    gen = body.model_dump(exclude={"inputs", "task", "stop", "stream"})
    if body.stream:
        version, tokens = inference.predict_stream(stream, task, body.inputs, retired, stop=tuple(body.stop), **gen)
        return StreamingResponse(predict_events(version, tokens), media_type="text/event-stream", headers=SSE_HEADERS)
    return inference.predict(stream, task, body.inputs, stop=tuple(body.stop), retired=retired, **gen)


@router.post("/score", response_model=ScoreOut, responses=errors(409, 410, 413))
def score(
    stream_id: StreamRef, body: ScoreIn, session: SessionDep, inference: InferenceDep, caller: CallerDep
) -> dict[str, Any]:
    """Classification without free generation: the log-likelihood of each choice per input."""
    stream, task, retired = _resolve(session, caller, stream_id, body.task)
    return inference.score(stream, task, body.inputs, body.choices, body.min_confidence, body.routing, retired)
