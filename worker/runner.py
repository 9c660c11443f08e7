"""One training job, start to finish: claim it, load the stream's last committed state, learn
the task, score every task learned so far (one new row of R), write blobs, then commit the tree
version, adapters and evaluation in one transaction. Any failure leaves the stream as it was.

The database reads and writes are service functions (`api.services.runs`, `.training`); the
learner comes from `api.learners`, as the API's does."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
import uuid

import torch
from sqlalchemy.orm import Session

from api.db import database_unavailable, session_factory
from api.enums import JobState, Outcome, Phase
from api.errors import Conflict
from api.learners import load_learner, load_task
from api.services import runs, training
from api.services.training import JobInput, NewAdapter
from api.settings import Settings
from api.storage import BlobError, BlobStore, make_store
from treelora_core import persist, views
from treelora_core.data import Task as TaskData
from treelora_core.errors import Cancelled, ConfigError, DataError, Diverged
from treelora_core.learner import ContinualLearner

from .claimed import ClaimedJob
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, DataError):
        return "invalid_dataset"
    if isinstance(exc, ConfigError):
        return "invalid_config"
    if isinstance(exc, Diverged):  # non-finite loss or weights: nothing is committed
        return "diverged"
    if isinstance(exc, BlobError):  # blob_missing or blob_corrupt
        return exc.code
    if isinstance(exc, OSError):
        return "io_error"
    return "internal"


def run_job(job_id: str, settings: Settings, store: BlobStore | None = None) -> Outcome:
    """Run a job if it is this worker's to run: DONE, WAIT (its stream is busy) or SKIP."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with session_factory(settings.db_url)() as session:
        claim = runs.claim(session=session, job_id=job_id, owner=owner, lease_s=settings.lease_s)
    if claim.outcome != Outcome.CLAIMED:
        return claim.outcome
    job = ClaimedJob(job_id, owner, settings)
    hb = Heartbeat(job)
    hb.start()
    try:
        _train(job, hb, store or make_store(settings))
    except Cancelled:
        if not hb.timed_out:  # past its time limit, the heartbeat has already failed the job
            job.in_session(lambda session: runs.cancelled(session=session, job_id=job_id, owner=owner))
    except Conflict as exc:  # lost the lease: the worker that took over publishes the result
        log.warning("job %s: %s", job_id, exc.message)
    except Exception as exc:
        if database_unavailable(exc):  # for a whole lease: nothing can be written now
            log.error("job %s: the database stayed unavailable; it is re-queued when its lease ends", job_id)
            return Outcome.DONE
        log.exception("job %s failed", job_id)
        code, message = error_code(exc), str(exc) or repr(exc)
        job.in_session(
            lambda session: runs.fail(session=session, job_id=job_id, owner=owner, code=code, message=message)
        )
    finally:
        hb.stop()
        gc.collect()  # the job's model copy sits in reference cycles: free it before the next job
    return Outcome.DONE


def _train(job: ClaimedJob, hb: Heartbeat, store: BlobStore) -> None:
    inp = job.in_session(lambda session: training.job_input(session=session, job_id=job.job_id))
    if hb.should_stop():
        raise Cancelled("cancelled before training")
    learner = load_learner(settings=job.settings, store=store, stream=inp.stream, version=inp.version)
    new_task = load_task(store=store, task=inp.task)
    report = training.job_report(report=learner.learn(new_task, progress=hb.progress, should_stop=hb.should_stop))
    hb.event("task.learned", report)
    scores, eval_seconds = _evaluate(hb, store, inp, learner, new_task)
    hb.set_state(JobState.EVALUATING, {"phase": Phase.COMMITTING, "step": len(scores), "total": len(scores)})

    manifest, blobs = persist.to_parts(learner)
    for sha, data in blobs.items():  # blobs first: the rows below point at them
        if store.put(data) != sha:
            raise OSError("object store returned a different content hash")
    tree = views.tree_view(learner)
    created_by = {n["id"]: n.get("created_by") for n in tree["nodes"]}
    adapters = []
    for node, sha in manifest["adapters"].items():
        blocks = learner.bank.blocks_of(node)
        adapters.append(NewAdapter(node, blocks[0], blocks[-1] + 1, sha, len(blobs[sha]), created_by.get(node)))
    paths = {t: views.path_segments(learner, t if learner.strategy.needs_task_id else None) for t in learner.task_names}
    hb.flush()

    def commit(session: Session) -> int:
        rows = training.adapter_rows(
            session=session,
            job_id=job.job_id,
            stream_id=inp.stream.id,
            base_version=inp.base_version,
            adapters=adapters,
        )
        return runs.commit_version(
            session=session,
            job_id=job.job_id,
            owner=job.owner,
            base_version=inp.base_version,
            manifest=manifest,
            tree=tree,
            similarity=views.similarities(learner),
            paths=paths,
            adapters=rows,
            scores=scores,
            eval_seconds=eval_seconds,
            report=report,
        )

    job.in_session(commit)


def _evaluate(
    hb: Heartbeat, store: BlobStore, inp: JobInput, learner: ContinualLearner, new_task: TaskData
) -> tuple[dict[str, float], float]:
    """One new row of R: every task learned so far and the new one, by task id -> (scores by
    task name, seconds). An old task whose stored splits are missing or corrupt is left out of
    the row (null in R) with an `evaluation.skipped` event: one lost blob does not fail every
    later job of the stream."""
    tasks = [*inp.learned, inp.task]
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, t in enumerate(tasks):
        hb.set_state(JobState.EVALUATING, {"phase": Phase.EVALUATING, "step": i, "total": len(tasks), "task": t.name})
        if hb.should_stop():
            raise Cancelled("cancelled while evaluating")
        try:
            data = new_task if t.id == inp.task.id else load_task(store=store, task=t)
        except BlobError as exc:
            log.warning("job %s: not scoring task %s: %s", hb.job.job_id, t.name, exc.message)
            hb.event("evaluation.skipped", {"task": t.name, "code": exc.code, "key": exc.key, "message": exc.message})
            continue
        scores[t.name] = round(learner.evaluate(data, "task_id"), 2)
    return scores, round(time.perf_counter() - t0, 2)
