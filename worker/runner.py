"""One training job, start to finish: claim it, load the stream's last committed state, learn
the task, score every task learned so far (one new row of R), write blobs, then commit the tree
version, adapters and evaluation in one transaction. Any failure leaves the stream as it was."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
import uuid
from typing import Any

import torch
from sqlalchemy import select

from api.db import session_factory
from api.errors import Conflict
from api.inference import load_learner
from api.models import Job, Stream, Task, TreeVersion
from api.services import runs
from api.settings import Settings
from api.storage import BlobNotFound, BlobStore, make_store
from treelora_core import persist, views
from treelora_core.data import Task as CoreTask
from treelora_core.data import parse_records
from treelora_core.errors import ConfigError, DataError

from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


def load_task(store: BlobStore, task: Task) -> CoreTask:
    train = parse_records(store.get(task.train_sha256), max_chars=None)
    test = parse_records(store.get(task.eval_sha256), max_chars=None)
    return CoreTask(task.name, train, test, task.metric)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, DataError):
        return "invalid_dataset"
    if isinstance(exc, ConfigError):
        return "invalid_config"
    if isinstance(exc, BlobNotFound):
        return "blob_missing"
    if isinstance(exc, OSError):
        return "io_error"
    return "internal"


def run_job(job_id: str, settings: Settings, store: BlobStore | None = None) -> str:
    """Run a job if it is this worker's to run: 'done', 'wait' (its stream is busy) or 'skip'."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    factory = session_factory(settings.db_url)
    with factory() as session:
        claim = runs.claim(session=session, job_id=job_id, owner=owner, lease_s=settings.lease_s)
    if claim.outcome != "claimed":
        return claim.outcome
    hb = Heartbeat(settings, job_id, owner)
    hb.start()
    try:
        _train(job_id, owner, settings, store or make_store(settings), hb)
    except InterruptedError:
        with factory() as session:
            runs.cancelled(session=session, job_id=job_id, owner=owner)
    except Conflict as exc:  # lost the lease: the worker that took over publishes the result
        log.warning("job %s: %s", job_id, exc.message)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        with factory() as session:
            runs.fail(session=session, job_id=job_id, owner=owner, code=error_code(exc), message=str(exc) or repr(exc))
    finally:
        hb.stop()
        gc.collect()  # the job's model copy sits in reference cycles: free it before the next job
    return "done"


def _train(job_id: str, owner: str, settings: Settings, store: BlobStore, hb: Heartbeat) -> None:
    with session_factory(settings.db_url)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        stream = session.get(Stream, job.stream_id)
        task = session.get(Task, job.task_id)
        assert stream is not None and task is not None
        base_version = stream.tree_version
        version = session.scalar(
            select(TreeVersion).where(TreeVersion.stream_id == stream.id, TreeVersion.version == base_version)
        )
        old_tasks = list(
            session.scalars(
                select(Task).where(Task.stream_id == stream.id, Task.status == "learned").order_by(Task.position)
            )
        )
        prev_adapters = runs.previous_adapters(session=session, stream_id=stream.id, version=base_version)
        task_jobs = runs.task_jobs(session=session, stream_id=stream.id)
    if hb.should_stop():
        raise InterruptedError("cancelled before training")
    learner = load_learner(settings, store, stream, version)
    new_task = load_task(store, task)
    report = learner.learn(new_task, progress=hb.progress, should_stop=hb.should_stop)
    report_json: dict[str, Any] = {
        "seconds": round(report.seconds, 2),
        "epochs_run": report.epochs_run,
        "steps": report.steps,
        "trainable_params": report.trainable_params,
        "final_train_loss": round(report.final_train_loss, 4),
        "val_losses": [round(v, 4) for v in report.val_losses],
        "placement": report.placement,
        "phase_seconds": report.phase_seconds,
    }
    hb.event("task.learned", report_json)

    # one new row of R: every task learned so far, with its task id
    all_tasks = [*old_tasks, task]
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, t in enumerate(all_tasks):
        hb.set_state("evaluating", {"phase": "evaluating", "step": i, "total": len(all_tasks), "task": t.name})
        if hb.should_stop():
            raise InterruptedError("cancelled while evaluating")
        core_task = new_task if t.id == task.id else load_task(store, t)
        scores[t.name] = round(learner.evaluate(core_task, "task_id"), 2)
    eval_seconds = time.perf_counter() - t0
    hb.set_state("evaluating", {"phase": "committing", "step": len(all_tasks), "total": len(all_tasks)})

    manifest, blobs = persist.to_parts(learner)
    for sha, data in blobs.items():  # blobs first: the rows below point at them
        if store.put(data) != sha:
            raise OSError("object store returned a different content hash")
    tree = views.tree_view(learner)
    nodes = {n["id"]: n for n in tree["nodes"]}
    adapters = []
    for node, sha in manifest["adapters"].items():
        blocks = learner.bank.blocks_of(node)
        prev = prev_adapters.get(node)
        trained_by = nodes.get(node, {}).get("created_by")
        if prev is not None and prev.sha256 == sha:
            created_by = prev.created_by
        elif trained_by is not None and trained_by in task_jobs:
            created_by = task_jobs[trained_by]  # a split renamed an old task's weights
        else:
            created_by = job_id
        adapters.append(
            {
                "node": node,
                "block_lo": blocks[0],
                "block_hi": blocks[-1] + 1,
                "sha256": sha,
                "bytes": len(blobs[sha]),
                "created_by": created_by,
            }
        )
    paths = {t: views.path_segments(learner, t if learner.strategy.needs_task_id else None) for t in learner.task_names}
    hb.flush()
    with session_factory(settings.db_url)() as session:
        runs.commit_version(
            session=session,
            job_id=job_id,
            owner=owner,
            base_version=base_version,
            manifest=manifest,
            tree=tree,
            similarity=views.similarities(learner),
            paths=paths,
            adapters=adapters,
            scores=scores,
            eval_seconds=round(eval_seconds, 2),
            report=report_json,
        )
