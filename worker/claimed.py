"""A job this worker has claimed: what the runner and its heartbeat share (the job, the lease's
owner, the settings), passed as one value rather than three arguments at every call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from api.db import database_unavailable, session_factory
from api.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_S = 1.0  # how often a write waiting for the database tries again


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    owner: str  # this worker's name on the lease; every write after the claim must match it
    settings: Settings

    def session(self) -> Session:
        return session_factory(self.settings.db_url)()

    def in_session(self, work: Callable[[Session], T]) -> T:
        """`work` in a new session; while the database is unavailable (down, restarting), try it
        again every second for up to one lease, so that a database restart does not lose a job
        that has trained: its commit waits. The writes check the lease, so a retry after another
        worker took the job over changes nothing."""
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                with self.session() as session:
                    return work(session)
            except Exception as exc:
                if not database_unavailable(exc) or time.monotonic() > deadline:
                    raise
                log.warning("job %s: the database is unavailable (%s); trying again", self.job_id, type(exc).__name__)
                time.sleep(RETRY_S)
