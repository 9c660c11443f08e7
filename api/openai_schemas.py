"""Wire schemas of the OpenAI-compatible routes (`/v1/completions`, `/v1/chat/completions`,
`/v1/models`): OpenAI's request and response shapes, with the predict body's bounds.

Requests keep fields this service does not know (`extra="allow"`), so that `openai_compat` can
answer each one by name: ignored (`user`), accepted at its neutral value (`logprobs: false`), or
400 `unsupported_parameter` naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .schemas import MAX_NEW_TOKENS_CEILING, MAX_SEED, MAX_STOP, MAX_STOP_CHARS, MAX_TEMPERATURE, Confidence, Text
from .settings import Routing

MAX_MODEL_CHARS = 200
MAX_N = 8  # choices per prompt
MAX_MESSAGES = 256

Model = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        description='"<stream>" or "<stream>:auto" (route by content), or "<stream>:<task>"; names or ids',
        examples=["support:billing"],
    ),
]
Stop = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]


def _listed(value: Any) -> Any:
    """OpenAI takes one string or a list of them: one is read as a list of one (so an error names
    `prompt.0`, say, whichever was sent)."""
    return [value] if isinstance(value, str) else value


def _parts(value: Any) -> Any:
    """A message's content: text, or a list of text parts."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, description="a last chunk (no choices) carries `usage`")


class GenerationIn(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="allow")
    model: Model
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_NEW_TOKENS_CEILING, description="at most TREELORA_MAX_NEW_TOKENS_LIMIT"
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="0: greedy decoding; else 0.001 to 10 (default 1, as OpenAI's)",
    )
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int | None = Field(default=None, ge=1, le=MAX_N, description="choices per prompt; above 1 needs sampling")
    stop: Annotated[list[Stop] | None, BeforeValidator(_listed)] = Field(
        default=None, description=f"a string, or at most {MAX_STOP} strings"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="makes sampling repeatable")
    stream: bool | None = Field(default=None, description="server-sent events in OpenAI's chunk format")
    stream_options: StreamOptions | None = None
    # this service's own, beside OpenAI's (clients send them with `extra_body`)
    routing: Routing | None = Field(default=None, description='for "<stream>" or ":auto": flat or tree routing')
    min_confidence: Confidence = None


class CompletionIn(GenerationIn):
    prompt: Annotated[list[Text], BeforeValidator(_listed)] = Field(
        description="a prompt, or a list of prompts (choices in prompt order)"
    )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[list[TextPart], BeforeValidator(_parts)] = Field(description="text, or text parts (joined)")
    name: Annotated[Text, Field(max_length=64)] | None = Field(default=None, description="accepted, unused")

    def text(self) -> str:
        return "".join(p.text for p in self.content)


class ChatIn(GenerationIn):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=MAX_NEW_TOKENS_CEILING, description="OpenAI's newer name for max_tokens; wins"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Route(BaseModel):
    """Which task answered and how sure routing was: the extra field OpenAI clients ignore."""

    stream: str
    tree_version: int
    task: str | None
    confidence: float | None = Field(description="auto routing only: the probability the route is right")
    low_confidence: bool
    path: list[dict[str, Any]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    treelora: Route


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    treelora: Route


class ChatOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    treelora: dict[str, Any] = Field(description="the stream's id, the task (null: routing), base model, tree version")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error or server_error")
    param: str | None = Field(description="the field or parameter at fault, when one is")
    code: str = Field(description="the service's code for the error: not_found, invalid, unauthorized, ...")


class OpenAIErrorOut(BaseModel):
    """OpenAI's error shape, with the service's status codes."""

    error: OpenAIErrorDetail
