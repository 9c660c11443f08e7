"""Wire schemas (pydantic), apart from the ORM tables."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from treelora_core.strategies import STRATEGIES

from .config_schema import (
    EWCSection,
    LoraSection,
    LoraTopSection,
    OLoRASection,
    PaperSection,
    TrainSection,
    TreeSection,
)
from .services.common import NAME_PATTERN
from .services.keys import KEY_NAME_PATTERN
from .settings import Routing, Settings

T = TypeVar("T")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, invalid, unauthorized")
    message: str
    param: str | None = Field(default=None, description="the field or parameter at fault, when one is")
    line: int | None = Field(default=None, description="the line of an uploaded file at fault")


class ErrorOut(BaseModel):
    """The one error shape."""

    error: ErrorDetail


ERRORS = {
    400: "bad request",
    401: "no API key, or one that is not valid (unknown, revoked or malformed)",
    403: "a valid key asking for what only the admin key may do, or a cross-origin page's write",
    404: "not found, or not the caller's (another key's stream is not found either)",
    405: "method not allowed (Allow lists those that are)",
    409: "conflict with the current state",
    410: "the task was retired from serving",
    413: "the request body is over its limit",
    415: "unsupported media type",
    422: "invalid request: `param` names the field",
    503: "a stored blob is missing or damaged, or a dependency is down",
}


def errors(*statuses: int, shape: type[BaseModel] = ErrorOut) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses, all in one error shape (the
    service's, or OpenAI's on its routes)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": shape, "description": ERRORS[status]}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        if status == 405:
            entry["headers"] = {"Allow": {"schema": {"type": "string"}, "description": "the methods allowed"}}
        out[status] = entry
    return out


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=NAME_PATTERN,
        description="unique; 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
        "not the shape of an id (str_, tsk_ or job_ and 22 hex digits)",
        examples=["support-tickets"],
    )
    base_model: str | None = Field(default=None, description="a model this service offers (default SmolLM2)")
    strategy: str = Field(
        default="treelora",
        description="treelora, treelora_paper, seq_lora, ewc, o_lora, per_task_lora or lora_top",
        json_schema_extra={"enum": list(STRATEGIES)},
    )
    # every section is checked field by field against the engine's bounds (api/config_schema.py)
    lora: LoraSection | None = Field(default=None, examples=[{"r": 8, "alpha": 32}])
    train: TrainSection | None = Field(default=None, examples=[{"epochs": 3, "lr": 0.001}])
    # each method's own knobs (see docs/treelora.md); a section of another method is accepted and unused
    tree: TreeSection | None = Field(default=None, examples=[{"min_own_blocks": 10}])
    paper: PaperSection | None = Field(default=None, examples=[{"reg_lambda": 0.5}])
    ewc: EWCSection | None = Field(default=None, examples=[{"lam": 100000.0}])
    o_lora: OLoRASection | None = Field(default=None, examples=[{"lam": 0.5}])
    lora_top: LoraTopSection | None = Field(default=None, examples=[{"own_blocks": 10}])
    chat_template: bool = False


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        default="",
        pattern=KEY_NAME_PATTERN + "|^$",
        max_length=64,
        description="a label for people (who holds the key); 1-64 letters, digits, spaces, '.', '_', '@' or '-'",
        examples=["ci-pipeline"],
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    prefix: str = Field(description="the secret's first characters, to tell keys apart")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    secret: str = Field(description="send as 'Authorization: Bearer <secret>'; shown this once, only its hash is kept")


class StreamOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    owner: str = Field(description='the id of the key that created it, or "admin"')
    base_model: str
    strategy: str
    config: dict[str, Any]
    tree_version: int
    tasks_learned: int = Field(description="tasks in the tree (retired ones included)")
    tasks_pending: int = Field(description="tasks whose job has not finished")
    active_job_id: str | None
    created_at: datetime


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    stream_id: str
    name: str
    metric: str
    status: str
    position: int | None
    n_train: int
    n_eval: int
    eval_source: str
    bytes: int
    train_sha256: str
    eval_sha256: str
    created_at: datetime
    retired_at: datetime | None = Field(default=None, description="when it was retired from serving")


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    stream_id: str
    task_id: str
    state: str
    progress: dict[str, Any]
    error: JobError | None = None
    attempt: int
    cancel_requested: bool
    result_version: int | None
    report: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Any) -> JobOut:
        out = cls.model_validate(job)
        if job.error_code:
            out.error = JobError(code=job.error_code, message=job.error_message or "")
        return out


class StreamDeletedOut(BaseModel):
    id: str
    name: str
    rows: dict[str, int] = Field(description="rows deleted, by table")
    blobs_deleted: int
    blobs_shared: int = Field(description="blobs another stream still names: kept")
    blobs_young: int = Field(description="blobs younger than the grace period: kept for the garbage collector")


class TaskSubmitted(BaseModel):
    task: TaskOut
    job: JobOut


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    job_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime


class AdapterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    node: str
    tree_version: int
    block_lo: int
    block_hi: int
    sha256: str
    bytes: int
    created_by: str
    created_at: datetime


def _unicode(text: str) -> str:
    """Text a tokenizer can read: valid Unicode, so no lone UTF-16 surrogate (a `\\ud800` escape
    in JSON parses to one; it cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "unicode", "text must be valid Unicode: a lone surrogate at character {at}", {"at": exc.start}
        ) from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
# Bounds of the predict and score bodies. The ones that depend on the settings (inputs per
# request, characters per input, max_new_tokens, choices and characters per choice) are checked
# before a request joins a batch (`api.serving`) and written into the OpenAPI spec by
# `with_limits`; the schema's own `le` is only the ceiling the settings may not pass.
MAX_NEW_TOKENS_CEILING = 4096
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 10.0
MAX_SEED = 2**53 - 1  # the largest integer every JSON client holds exactly (a double)
MAX_STOP, MAX_STOP_CHARS = 8, 100
TaskRef = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        max_length=64,
        description='a task id or name, or "auto" to route by content',
    ),
]
Confidence = Annotated[
    float | None,
    Field(
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="flag routes below this confidence (default: the router's calibrated threshold, GET .../router)",
    ),
]


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Text] = Field(min_length=1, description="prompts")
    task: TaskRef = "auto"
    max_new_tokens: int = Field(default=16, ge=1, le=MAX_NEW_TOKENS_CEILING)
    do_sample: bool = Field(default=False, description="sample (temperature, top_p) instead of greedy decoding")
    temperature: float = Field(default=1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    stop: list[Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=MAX_STOP, description="generation ends before any of these"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="makes sampling repeatable")
    ignore_eos: bool = Field(default=False, description="always generate max_new_tokens (load tests)")
    routing: Routing | None = Field(default=None, description='for task "auto": the best task (flat) or tree descent')
    min_confidence: Confidence = None
    stream: bool = Field(default=False, description="answer as server-sent events, token by token")


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Text] = Field(min_length=1)
    choices: list[Text] = Field(min_length=1, description="candidate completions, scored for every input")
    task: TaskRef = "auto"
    routing: Routing | None = None
    min_confidence: Confidence = None


def with_limits(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The OpenAPI spec with the predict and score bounds that the settings choose."""
    texts = {"inputs": (settings.max_predict_inputs, settings.max_field_chars)}  # items, characters each
    limits = {
        "PredictIn": texts,
        "ScoreIn": {**texts, "choices": (settings.max_score_choices, settings.max_choice_chars)},
    }
    bodies = spec.get("components", {}).get("schemas", {})
    for name, fields in limits.items():
        props = bodies.get(name, {}).get("properties", {})
        for field, (items, chars) in fields.items():
            if field in props:
                props[field]["maxItems"] = items
                props[field]["items"]["maxLength"] = chars
        if "max_new_tokens" in props:
            props["max_new_tokens"]["maximum"] = settings.max_new_tokens_limit
    return spec


class PredictionOut(BaseModel):
    output: str
    tokens: int
    finish_reason: Literal["stop", "length"] = Field(description="stop: the end token or a stop string")
    prompt_tokens: int = Field(description="the prompt's tokens, as cut to the stream's max_length")
    task: str | None
    confidence: float | None
    low_confidence: bool
    path: list[dict[str, Any]]


class PredictOut(BaseModel):
    tree_version: int
    predictions: list[PredictionOut]


class ChoiceScore(BaseModel):
    choice: str
    logprob: float


class ScoreResult(BaseModel):
    best: str
    choices: list[ChoiceScore]
    task: str | None
    confidence: float | None
    low_confidence: bool
    path: list[dict[str, Any]]


class ScoreOut(BaseModel):
    tree_version: int
    results: list[ScoreResult]
