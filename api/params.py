"""Path and query parameters with their real constraints, so that the OpenAPI spec states them and
a value outside (a NUL byte, a 10 KB name, an integer past 64 bits) is a 422 before anything reads
the database."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Header, Path, Query

from .enums import JobState
from .services.common import NAME_PATTERN

ID_PATTERN = r"^(str|tsk|job|key)_[0-9a-f]{22}$"  # models.new_id
MAX_ROW_ID = 2**63 - 1  # an event id: a 64-bit integer in the database

StreamRef = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="a stream's id or name")]
TaskRef = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="a task's id or name")]
JobId = Annotated[str, Path(pattern=r"^job_[0-9a-f]{22}$", description="a job's id")]
KeyId = Annotated[str, Path(pattern=r"^key_[0-9a-f]{22}$", description="a key's id")]
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="the last id of the previous page: the page after it")
]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[
    Literal["asc", "desc"],
    Query(description="by creation: oldest first (asc) or newest first (desc); `after` follows it"),
]
EventCursor = Annotated[int | None, Query(ge=0, le=MAX_ROW_ID, description="the events after this event id")]
LastEventId = Annotated[int | None, Header(ge=0, le=MAX_ROW_ID, description="SSE: resume after this event id")]
StreamFilter = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64, description="a stream's id or name")]
StateFilter = Annotated[JobState | None, Query(description="only jobs in this state")]
Version = Annotated[int | None, Query(ge=0, le=2**31 - 1, description="a tree version (default: the latest)")]
