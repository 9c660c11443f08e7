"""Streams and their tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from .. import learners
from ..auth import CallerDep
from ..deps import SessionDep, SettingsDep, StoreDep
from ..errors import TooLarge
from ..params import Cursor, Limit, StreamRef, TaskRef
from ..schemas import JobOut, Page, StreamCreate, StreamDeletedOut, StreamOut, TaskOut, TaskSubmitted, errors
from ..services import lifecycle, streams, tasks
from ..services.common import NAME_PATTERN

router = APIRouter(prefix="/v1/streams", tags=["streams"], responses=errors(401, 422, 503))


@router.post("", status_code=201, response_model=StreamOut, responses=errors(409, 413))
def create_stream(body: StreamCreate, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> StreamOut:
    sections = {"lora", "train", "tree", "paper", "ewc", "o_lora", "lora_top"}
    # the fields the client set; the engine fills in its defaults
    config = {k: v for k, v in body.model_dump(include=sections, exclude_unset=True).items() if v is not None}
    stream = streams.create_stream(
        session=session,
        settings=settings,
        caller=caller,
        name=body.name,
        base_model=body.base_model,
        strategy=body.strategy,
        config={**config, "chat_template": body.chat_template},
        linear_names=lambda model: learners.linear_names(settings, model),
    )
    return StreamOut.model_validate(stream)


@router.get("", response_model=Page[StreamOut])
def list_streams(session: SessionDep, caller: CallerDep, after: Cursor = None, limit: Limit = 20) -> Page[StreamOut]:
    rows, more = streams.list_streams(session=session, caller=caller, after=after, limit=limit)
    return Page(data=[StreamOut.model_validate(r) for r in rows], has_more=more)


@router.get("/{stream_id}", response_model=StreamOut, responses=errors(404))
def get_stream(stream_id: StreamRef, session: SessionDep, caller: CallerDep) -> StreamOut:
    return StreamOut.model_validate(streams.get_stream(session=session, stream_id=stream_id, caller=caller))


@router.delete("/{stream_id}", response_model=StreamDeletedOut, responses=errors(404, 409))
def delete_stream(
    stream_id: StreamRef, session: SessionDep, settings: SettingsDep, store: StoreDep, caller: CallerDep
) -> StreamDeletedOut:
    """The stream's rows, then the blobs no other stream names (409 while a job is unfinished)."""
    out = lifecycle.delete_stream(
        session=session, store=store, caller=caller, stream_id=stream_id, grace_s=settings.blob_grace_s
    )
    return StreamDeletedOut.model_validate(out, from_attributes=True)


def _read(upload: UploadFile, limit: int, param: str) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{param} is larger than {limit} bytes", param=param)
    return data


@router.post("/{stream_id}/tasks", status_code=202, response_model=TaskSubmitted, responses=errors(404, 409, 413))
def submit_task(
    stream_id: StreamRef,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    caller: CallerDep,
    name: Annotated[
        str, Form(pattern=NAME_PATTERN, description="task name, unique in the stream; rules as a stream name's")
    ],
    file: Annotated[UploadFile, File(description="training data: JSONL of {prompt, completion}")],
    metric: Annotated[str, Form(description="exact_match or rouge_l")] = "exact_match",
    eval_file: Annotated[UploadFile | None, File(description="optional eval split (else held out)")] = None,
) -> TaskSubmitted:
    train = _read(file, settings.max_upload_bytes, "file")
    evals = _read(eval_file, settings.max_upload_bytes, "eval_file") if eval_file is not None else None
    task, job = tasks.submit_task(
        session=session,
        settings=settings,
        store=store,
        caller=caller,
        stream_id=stream_id,
        name=name,
        metric=metric,
        train=train,
        eval_data=evals,
    )
    return TaskSubmitted(task=TaskOut.model_validate(task), job=JobOut.of(job))


@router.get("/{stream_id}/tasks", response_model=Page[TaskOut], responses=errors(404))
def list_tasks(
    stream_id: StreamRef, session: SessionDep, caller: CallerDep, after: Cursor = None, limit: Limit = 20
) -> Page[TaskOut]:
    rows, more = tasks.list_tasks(session=session, caller=caller, stream_id=stream_id, after=after, limit=limit)
    return Page(data=[TaskOut.model_validate(r) for r in rows], has_more=more)


@router.get("/{stream_id}/tasks/{task_id}", response_model=TaskOut, responses=errors(404))
def get_task(stream_id: StreamRef, task_id: TaskRef, session: SessionDep, caller: CallerDep) -> TaskOut:
    return TaskOut.model_validate(tasks.get_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id))


@router.post("/{stream_id}/tasks/{task_id}/retire", response_model=TaskOut, responses=errors(404, 409))
def retire_task(stream_id: StreamRef, task_id: TaskRef, session: SessionDep, caller: CallerDep) -> TaskOut:
    """Stop serving a learned task (predict by id: 410; auto routing skips it); it stays in the tree and R."""
    task = lifecycle.retire_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    return TaskOut.model_validate(task)


@router.post("/{stream_id}/tasks/{task_id}/unretire", response_model=TaskOut, responses=errors(404))
def unretire_task(stream_id: StreamRef, task_id: TaskRef, session: SessionDep, caller: CallerDep) -> TaskOut:
    """Serve a retired task again."""
    task = lifecycle.unretire_task(session=session, caller=caller, stream_id=stream_id, task_id=task_id)
    return TaskOut.model_validate(task)
