"""ORM tables. PostgreSQL is the source of truth for jobs; blobs live in the object store and
rows point at them by sha256. Tree versions, adapters and evaluations are append-only."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column
from sqlalchemy.types import TypeDecorator

from .enums import JobState, TaskState


def new_id(prefix: str) -> str:
    """Time-ordered ids (ms clock + randomness) so that sorting by id is sorting by creation."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(5).hex()}"


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC everywhere; SQLite forgets the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime()}


ADMIN_OWNER = "admin"  # the owner of streams made with the admin key, or with authentication off


class ApiKey(Base):
    """An API key. The secret is shown once, when the key is created; only its sha256 is kept.
    A key is revoked, never deleted, so the streams it owns keep naming it."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # a label for people; not unique
    prefix: Mapped[str] = mapped_column(String(16))  # the secret's first characters, to tell keys apart
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    revoked_at: Mapped[datetime | None]


class Stream(Base):
    __tablename__ = "streams"
    # names are unique per owner: a key never learns from a 409 that another key named a stream so
    __table_args__ = (UniqueConstraint("owner", "name"),)
    if TYPE_CHECKING:  # read-only counts, mapped below `Task` (`_task_count`)
        tasks_learned: int
        tasks_pending: int
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # the id of the key that created it, or ADMIN_OWNER; no foreign key: keys are never deleted
    owner: Mapped[str] = mapped_column(String(40), default=ADMIN_OWNER, server_default=ADMIN_OWNER, index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]]  # treelora_core StreamConfig as a dict
    tree_version: Mapped[int] = mapped_column(Integer, default=0)  # 0: nothing learned yet
    active_job_id: Mapped[str | None] = mapped_column(String(40))  # the per-stream training lock
    created_at: Mapped[datetime] = mapped_column(default=now)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("stream_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=TaskState.PENDING)  # a TaskState
    position: Mapped[int | None] = mapped_column(Integer)  # order in which the stream learned it
    train_sha256: Mapped[str] = mapped_column(String(64))
    eval_sha256: Mapped[str] = mapped_column(String(64))
    n_train: Mapped[int] = mapped_column(Integer)
    n_eval: Mapped[int] = mapped_column(Integer)
    eval_source: Mapped[str] = mapped_column(String(16))  # "uploaded" or "holdout"
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=now)
    retired_at: Mapped[datetime | None]  # retired from serving: stays in the tree and in R


def _task_count(state: TaskState) -> Any:
    """Tasks of the stream in `state`, read with the stream's row (one subquery, no extra round trip)."""
    return column_property(
        select(func.count(Task.id))
        .where(Task.stream_id == Stream.id, Task.status == state)
        .correlate_except(Task)
        .scalar_subquery()
    )


Stream.tasks_learned = _task_count(TaskState.LEARNED)  # type: ignore[misc]
Stream.tasks_pending = _task_count(TaskState.PENDING)  # type: ignore[misc]


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)  # a JobState
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # step, total, phase, eta_s, ...
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result_version: Mapped[int | None] = mapped_column(Integer)  # the tree version it committed
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seconds, params, placement
    created_at: Mapped[datetime] = mapped_column(default=now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)


class TreeVersion(Base):
    __tablename__ = "tree_versions"
    __table_args__ = (UniqueConstraint("stream_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]]  # treelora_core.persist manifest: adapters and extras by sha256
    tree: Mapped[dict[str, Any]]  # treelora_core.views.tree_view
    similarity: Mapped[dict[str, Any]]  # task -> task -> similarity
    paths: Mapped[dict[str, Any]]  # task -> path segments
    created_by: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=now)


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("stream_id", "tree_version", "node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    tree_version: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(64))
    block_lo: Mapped[int] = mapped_column(Integer)
    block_hi: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(ForeignKey("jobs.id"))  # the job that trained these weights
    created_at: Mapped[datetime] = mapped_column(default=now)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("stream_id", "tree_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id"), index=True)
    tree_version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    scores: Mapped[dict[str, Any]]  # task name -> score (%), every task learned so far
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=now)
