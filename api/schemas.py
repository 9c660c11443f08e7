"""Wire schemas (pydantic), apart from the ORM tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .settings import Routing

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="unique; letters, digits, '.', '_' or '-'", examples=["support-tickets"])
    base_model: str | None = Field(default=None, description="a model this service offers (default SmolLM2)")
    strategy: str = Field(
        default="treelora",
        description="treelora, treelora_paper, seq_lora, ewc, o_lora, per_task_lora or lora_top",
    )
    lora: dict[str, Any] | None = Field(default=None, examples=[{"r": 8, "alpha": 32}])
    train: dict[str, Any] | None = Field(default=None, examples=[{"epochs": 3, "lr": 0.001}])
    # each method's own knobs (see docs/treelora.md); a section of another method is accepted and unused
    tree: dict[str, Any] | None = Field(default=None, examples=[{"min_own_blocks": 10}])
    paper: dict[str, Any] | None = Field(default=None, examples=[{"reg_lambda": 0.5}])
    ewc: dict[str, Any] | None = Field(default=None, examples=[{"lam": 100000.0}])
    o_lora: dict[str, Any] | None = Field(default=None, examples=[{"lam": 0.5}])
    lora_top: dict[str, Any] | None = Field(default=None, examples=[{"own_blocks": 10}])
    chat_template: bool = False


class StreamOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    base_model: str
    strategy: str
    config: dict[str, Any]
    tree_version: int
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


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1, description="prompts")
    task: str = Field(default="auto", description='a task id or name, or "auto" to route by content')
    max_new_tokens: int = Field(default=16, ge=1)
    do_sample: bool = Field(default=False, description="sample (temperature, top_p) instead of greedy decoding")
    temperature: float = Field(default=1.0, gt=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=8, description="generation ends before any of these")
    seed: int | None = Field(default=None, ge=0, description="makes sampling repeatable")
    ignore_eos: bool = Field(default=False, description="always generate max_new_tokens (load tests)")
    routing: Routing | None = Field(default=None, description='for task "auto": flat prototypes or tree descent')
    min_confidence: float | None = Field(default=None, ge=0, le=1, description="flag routes below this confidence")


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1)
    choices: list[str] = Field(min_length=1, max_length=32, description="candidate completions, scored for every input")
    task: str = "auto"
    routing: Routing | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)


class PredictionOut(BaseModel):
    output: str
    tokens: int
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
