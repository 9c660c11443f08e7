"""OpenAI-compatible routes: completions, chat completions (streamed or not) and the models list.
A model is `"<stream>"`, `"<stream>:auto"` or `"<stream>:<task>"`; errors here take OpenAI's
shape (`api.errors.wire_error`), with the statuses of the rest of the API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from .. import openai_format
from ..auth import CallerDep
from ..deps import InferenceDep, SessionDep, SettingsDep
from ..inference import Inference
from ..openai_format import Call
from ..openai_schemas import ChatIn, ChatOut, CompletionIn, CompletionOut, ModelList, ModelOut, OpenAIErrorOut
from ..schemas import errors
from ..services import catalog
from ..services.owners import Caller
from ..streaming import SSE_HEADERS

router = APIRouter(prefix="/v1", tags=["openai"], responses=errors(401, 422, 503, shape=OpenAIErrorOut))
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "with stream: true, OpenAI's chunks"},
    **errors(400, 404, 409, 410, 413, shape=OpenAIErrorOut),
}


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Each stream (auto routing) and each learned task that is not retired, as OpenAI models."""
    return {"object": "list", "data": catalog.list_models(session=session, caller=caller)}


@router.get("/models/{model}", response_model=ModelOut, responses=errors(404, shape=OpenAIErrorOut))
def get_model(model: str, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    return catalog.get_model(session=session, caller=caller, model=model)


@router.post("/completions", response_model=CompletionOut, responses=STREAMED)
def completions(body: CompletionIn, session: SessionDep, caller: CallerDep, inference: InferenceDep) -> Any:
    return _answer(openai_format.completion_call(body), session, caller, inference)


@router.post("/chat/completions", response_model=ChatOut, responses=STREAMED)
def chat_completions(
    body: ChatIn, session: SessionDep, caller: CallerDep, settings: SettingsDep, inference: InferenceDep
) -> Any:
    """`messages` rendered with the base model's chat template."""
    return _answer(openai_format.chat_call(body, settings), session, caller, inference)


def _answer(call: Call, session: SessionDep, caller: Caller, inference: Inference) -> Any:
    found = catalog.resolve_model(session=session, caller=caller, model=call.model)
    session.close()  # generation can take a while: do not hold a connection
    name, args = found.stream.name, (found.stream, found.task, call.inputs, found.retired)
    with openai_format.named_for(call):
        if call.stream:
            version, tokens = inference.predict_stream(*args, **call.gen)
            chunks = openai_format.chunks(call, name, version, tokens)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        out = inference.predict(*args, **call.gen)
    return openai_format.response(call, name, out["tree_version"], out["predictions"])
