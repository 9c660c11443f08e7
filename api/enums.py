"""The states a job and a task go through, and what a job's message came to on a worker.

`StrEnum`s: the database columns and the wire keep the same plain strings ("queued", "learned", ...),
and a member compares equal to its string.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)  # a job never leaves these
ACTIVE = (JobState.RUNNING, JobState.EVALUATING)  # a worker holds the job's lease


class TaskState(StrEnum):
    PENDING = "pending"  # its job has not finished
    LEARNED = "learned"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """`Job.progress["phase"]`: finer than the job's state. TRAIN and VALIDATE come from the
    engine's progress callback; the service writes the others."""

    QUEUED = "queued"
    LOADING = "loading"
    TRAIN = "train"
    VALIDATE = "validate"
    EVALUATING = "evaluating"
    COMMITTING = "committing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """What one delivery of a job's message came to: a claim gives CLAIMED, WAIT or SKIP; the
    worker's `run_job` gives DONE, WAIT or SKIP."""

    CLAIMED = "claimed"
    WAIT = "wait"  # an earlier job of the same stream is unfinished: deliver again later
    SKIP = "skip"  # finished, or another worker holds a live lease
    DONE = "done"  # this worker ran it (succeeded, failed or cancelled)
