"""A running job's heartbeat: a thread that renews the lease, flushes progress and events, and
notices a cancel request or a lost lease within `heartbeat_s` seconds."""

from __future__ import annotations

import logging
import threading
from typing import Any

from api.enums import JobState, Phase
from api.services import runs

from .claimed import ClaimedJob

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, job: ClaimedJob) -> None:
        self.job = job
        self.cancel = False  # the user asked to cancel
        self.lost = False  # another worker took the job over (our lease expired)
        self._progress: dict[str, Any] | None = None
        self._state: JobState | None = None
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.job_id}", daemon=True)

    # -- called from the training thread ------------------------------------------------------
    def progress(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self._progress = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()}
            if ev.get("phase") == Phase.VALIDATE:
                self._events.append(("epoch.validated", dict(self._progress)))

    def event(self, type_: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._events.append((type_, data))

    def set_state(self, state: JobState, progress: dict[str, Any]) -> None:
        with self._lock:
            self._state, self._progress = state, progress
        self.flush()

    def should_stop(self) -> bool:
        return self.cancel or self.lost

    # -- the thread -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            progress, state, events = self._progress, self._state, self._events
            self._progress, self._state, self._events = None, None, []
        try:
            with self.job.session() as session:
                ours, cancel = runs.heartbeat(
                    session=session,
                    job_id=self.job.job_id,
                    owner=self.job.owner,
                    lease_s=self.job.settings.lease_s,
                    progress=progress,
                    state=state,
                    events=events,
                )
            self.cancel = self.cancel or cancel
            self.lost = self.lost or not ours
        except Exception:  # a database blip: keep training, the lease has slack for a few misses
            log.exception("heartbeat of %s failed", self.job.job_id)

    def _run(self) -> None:
        while not self._stop.wait(self.job.settings.heartbeat_s):
            self.flush()
