"""A job this worker has claimed: what the runner and its heartbeat share (the job, the lease's
owner, the settings), passed as one value rather than three arguments at every call."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.db import session_factory
from api.settings import Settings


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    owner: str  # this worker's name on the lease; every write after the claim must match it
    settings: Settings

    def session(self) -> Session:
        return session_factory(self.settings.db_url)()
