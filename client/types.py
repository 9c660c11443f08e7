"""Typed responses: pydantic models of the service's JSON. Fields the service adds later are kept
(`extra="allow"`), so a newer server does not break an older client."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data, as the service sent it."""
        return self.model_dump(mode="json")


class Page(Model, Generic[T]):
    """One page of a list; pass the last item's id as `after` for the next (the SDK's `iter_*`
    methods do it for you)."""

    data: list[T]
    has_more: bool


class Stream(Model):
    id: str
    name: str
    base_model: str
    strategy: str
    config: dict[str, Any]
    tree_version: int  # each learned task commits one version
    tasks_learned: int = 0  # tasks in the tree (retired ones included)
    tasks_pending: int = 0  # tasks whose job has not finished
    active_job_id: str | None = None  # the job holding the stream's training lock
    created_at: datetime


class Task(Model):
    id: str
    stream_id: str
    name: str
    metric: str
    status: str  # pending, learned, failed, cancelled
    position: int | None = None
    n_train: int
    n_eval: int
    eval_source: str  # uploaded or holdout
    bytes: int
    train_sha256: str
    eval_sha256: str
    created_at: datetime
    retired_at: datetime | None = None  # retired from serving (it stays in the tree and in R)


class StreamDeleted(Model):
    id: str
    name: str
    rows: dict[str, int]  # rows deleted, by table
    blobs_deleted: int
    blobs_shared: int  # kept: another stream names them
    blobs_young: int  # kept: younger than the grace period


class JobError(Model):
    code: str
    message: str


class JobProgress(Model):
    """`phase`: queued, loading, train, validate, evaluating, committing, done, failed or
    cancelled. In `train`, `step`/`total` are optimiser steps and `eta_s` the seconds left; in
    `evaluating`, they count the tasks scored."""

    phase: str | None = None
    step: int | None = None
    total: int | None = None
    epoch: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    eta_s: float | None = None
    task: str | None = None
    state: str | None = None  # only in the live event stream


class Job(Model):
    id: str
    stream_id: str
    task_id: str
    state: str  # queued, running, evaluating, succeeded, failed, cancelled
    progress: JobProgress
    error: JobError | None = None
    attempt: int
    cancel_requested: bool
    result_version: int | None = None
    report: dict[str, Any] | None = None  # seconds, steps, trainable params, placement, ...
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


class TaskSubmitted(Model):
    task: Task
    job: Job


class JobEvent(Model):
    """One event of a job. In the live stream, `type == "progress"` events carry the job's state
    and progress in `data` and have no `id`; the others are the stored events (`job.queued`,
    `job.started`, `epoch.validated`, `task.learned`, `job.succeeded`, `job.failed`, ...)."""

    id: int | None = None
    job_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime | None = None

    @property
    def progress(self) -> JobProgress | None:
        return JobProgress.model_validate(self.data) if self.type == "progress" else None


class TreeNode(Model):
    id: str
    lo: int  # blocks [lo, hi)
    hi: int
    parent: str | None = None
    children: list[str] = []
    task: str | None = None  # the task owning this leaf
    created_by: str | None = None
    members: list[str] = []  # tasks whose path goes through the node
    adapter_sha256: str | None = None


class Tree(Model):
    stream_id: str
    version: int
    strategy: str
    blocks: int | None = None
    nodes: list[TreeNode]
    similarity: dict[str, dict[str, float]]
    created_by: str | None = None
    created_at: datetime | None = None
    latest_version: int


class TreeVersion(Model):
    version: int
    created_by: str
    created_at: datetime
    tasks: list[str]


class PathSegment(Model):
    lo: int
    hi: int
    adapters: list[str]


class TaskPath(Model):
    task: str
    task_id: str
    tree_version: int
    segments: list[PathSegment]


class SimilarTask(Model):
    task: str
    similarity: float


class SimilarTasks(Model):
    task: str
    tree_version: int
    similar: list[SimilarTask]


class Adapter(Model):
    node: str
    tree_version: int
    block_lo: int
    block_hi: int
    sha256: str
    bytes: int
    created_by: str
    created_at: datetime


class EvaluationRow(Model):
    tree_version: int
    job_id: str
    scores: dict[str, float]
    seconds: float


class Evaluations(Model):
    """`R[t][i]`: the score (%) on task i after version t+1, None for tasks not added yet."""

    stream_id: str
    tasks: list[str]
    R: list[list[float | None]]
    rows: list[EvaluationRow]
    op: float | None = None
    bwt: float | None = None
    forgetting: float | None = None
    forgetting_per_task: dict[str, float] = {}


class Prediction(Model):
    output: str
    tokens: int
    task: str | None = None  # the task that answered (the routed one for task="auto")
    confidence: float | None = None  # routing confidence, for task="auto"
    low_confidence: bool = False
    path: list[PathSegment] = []


class PredictResponse(Model):
    tree_version: int
    predictions: list[Prediction]


class ChoiceScore(Model):
    choice: str
    logprob: float


class ScoreResult(Model):
    best: str
    choices: list[ChoiceScore]
    task: str | None = None
    confidence: float | None = None
    low_confidence: bool = False
    path: list[PathSegment] = []


class ScoreResponse(Model):
    tree_version: int
    results: list[ScoreResult]
