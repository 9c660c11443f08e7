"""The Celery app of the worker: `celery -A worker.app worker --pool solo -c 1`.

One named task, `treelora.train(job_id)`; its body is `runner.run_job`. A sweeper thread sends
again the jobs that need it (never sent, or whose worker died: reported as `job.worker_lost` and
re-queued) so that every job finishes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from api.db import session_factory
from api.enums import Outcome
from api.queue import TRAIN_TASK, enqueue, make_celery
from api.services import runs
from api.settings import get_settings

log = logging.getLogger(__name__)
settings = get_settings()
app = make_celery(settings)
_stop = threading.Event()
# how often the sweeper looks: a lost lease is reported (`job.worker_lost`) and its job sent again
# at most this long after the lease ran out
SWEEP_S = min(15.0, settings.lease_s / 4)


@app.task(name=TRAIN_TASK, bind=True, max_retries=None)
def train(self: Task, job_id: str) -> str:
    from .runner import run_job  # torch loads in the worker only

    outcome = run_job(job_id, settings)
    if outcome == Outcome.WAIT:  # an earlier job of the same stream is still training
        raise self.retry(countdown=3)
    return outcome


def sweep_once() -> list[str]:
    """Send the jobs `runs.sweep` picks; those the broker refuses (it is down) stay marked
    unsent, so the first sweep after it is back sends them."""
    sent, refused = [], []
    with session_factory(settings.db_url)() as session:
        for job_id in runs.sweep(session=session, settings=settings):
            try:
                enqueue(settings, job_id)
                sent.append(job_id)
            except Exception as exc:
                refused.append(job_id)
                log.warning("could not send %s (%s); the next sweep tries again", job_id, exc)
        runs.unsent(session=session, job_ids=refused)
    if sent:
        log.info("sent again: %s", ", ".join(sent))
    return sent


def _sweeper() -> None:
    while not _stop.wait(SWEEP_S):
        try:
            sweep_once()
        except Exception:
            log.exception("sweep failed")


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    sweep_once()
    threading.Thread(target=_sweeper, name="sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
