"""A running job's heartbeat: a thread that renews the lease, flushes progress and events, and
notices a cancel request, a lost lease or the end of the job's time limit within `heartbeat_s`
seconds.

Progress goes to the job row at every beat (live streams read it from there); event rows stay
few: `epoch.validated` at most once per EPOCH_EVENT_S (and always the last epoch's), a
`job.phase` event when the job's phase changes, and the final state."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from api.db import database_unavailable
from api.enums import JobState, Phase
from api.services import runs

from .claimed import ClaimedJob

log = logging.getLogger(__name__)
EPOCH_EVENT_S = 10.0  # at most one `epoch.validated` row per this many seconds, plus the last epoch's
STEP_POINTS = 64  # per-step training losses an `epoch.validated` event carries at most


def thin(points: list[list[float]], most: int) -> list[list[float]]:
    """At most `most` of the points, evenly spaced, always keeping the first and the last."""
    if len(points) <= most:
        return list(points)
    idx = sorted({round(k * (len(points) - 1) / (most - 1)) for k in range(most)})
    return [points[i] for i in idx]


class Heartbeat:
    def __init__(self, job: ClaimedJob) -> None:
        self.job = job
        self.cancel = False  # the user asked to cancel
        self.lost = False  # another worker took the job over (our lease expired)
        self.timed_out = False  # the job ran past `job_time_limit_s`: failed with `time_limit`
        self._t0 = time.monotonic()  # the claim (this attempt's start)
        self._phase: str = Phase.LOADING  # the last phase recorded as a `job.phase` event
        self._epoch_at = -math.inf  # when the last `epoch.validated` row was queued
        self._held: dict[str, Any] | None = None  # the latest epoch not written (throttled)
        self._progress: dict[str, Any] | None = None
        self._losses: list[float] = []  # this epoch's training losses, for its `epoch.validated` event
        self._steps: list[list[float]] = []  # [step, loss] since the last written epoch event
        self._state: JobState | None = None
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.job_id}", daemon=True)

    # -- called from the training thread ------------------------------------------------------
    def progress(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self._progress = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()}
            self._phase_event(ev.get("phase"))
            if ev.get("phase") == Phase.TRAIN and isinstance(ev.get("loss"), float):
                self._losses.append(ev["loss"])
                if isinstance(ev.get("step"), int):
                    self._steps.append([ev["step"], round(ev["loss"], 4)])
            if ev.get("phase") == Phase.VALIDATE:
                data = dict(self._progress)
                if self._losses:  # the epoch's mean training loss beside its validation loss
                    data["train_loss"] = round(sum(self._losses) / len(self._losses), 4)
                    self._losses = []
                # the per-step losses since the last written epoch event (a throttled epoch's
                # steps ride on the next one), thinned to at most STEP_POINTS
                data["train_steps"] = thin(self._steps, STEP_POINTS)
                self._epoch_event(data)

    def event(self, type_: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._release_epoch()
            self._events.append((type_, data))

    def set_state(self, state: JobState, progress: dict[str, Any]) -> None:
        with self._lock:
            self._release_epoch()
            self._phase_event(progress.get("phase"))
            self._state, self._progress = state, progress
        self.flush()

    def should_stop(self) -> bool:
        return self.cancel or self.lost or self.timed_out

    # -- event rows (called with the lock held) -------------------------------------------------
    def _phase_event(self, phase: str | None) -> None:
        phase = Phase.TRAIN if phase == Phase.VALIDATE else phase  # an epoch's validation is training
        if phase is not None and phase != self._phase:
            self._phase = phase
            self._events.append(("job.phase", {"phase": phase}))

    def _epoch_event(self, data: dict[str, Any]) -> None:
        t = time.monotonic()
        if t - self._epoch_at >= EPOCH_EVENT_S:
            self._epoch_at, self._held, self._steps = t, None, []
            self._events.append(("epoch.validated", data))
        else:
            self._held = data  # written if no later epoch is, when training ends

    def _release_epoch(self) -> None:
        if self._held is not None:
            self._events.append(("epoch.validated", self._held))
            self._held, self._steps = None, []

    # -- the thread -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._release_epoch()
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
        except Exception as exc:  # a database blip: keep training, the lease has slack for a few misses
            if database_unavailable(exc):  # an outage: one line a beat, not a traceback
                log.warning("heartbeat of %s failed: the database is unavailable (%s)", self.job.job_id, exc)
            else:
                log.exception("heartbeat of %s failed", self.job.job_id)

    def _run(self) -> None:
        while not self._stop.wait(self.job.settings.heartbeat_s):
            self.flush()
            if not self.timed_out and time.monotonic() - self._t0 > self.job.settings.job_time_limit_s:
                self._time_up()

    def _time_up(self) -> None:
        """Fail the job with `time_limit` now (its stream lock is released at once); training
        stops at its next step or evaluated task, and nothing it computed is committed."""
        limit = self.job.settings.job_time_limit_s
        message = f"the job ran longer than its time limit of {limit:g} s (TREELORA_JOB_TIME_LIMIT_S)"
        try:
            with self.job.session() as session:
                runs.fail(
                    session=session, job_id=self.job.job_id, owner=self.job.owner, code="time_limit", message=message
                )
        except Exception:  # a database blip: the next beat tries again
            log.exception("failing %s at its time limit failed", self.job.job_id)
            return
        self.timed_out = True
