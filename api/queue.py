"""The Celery client both sides share: the API sends job ids by task name (it never imports the
worker's code), the worker consumes them. Only ids travel; the database holds the job."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from celery import Celery

from .settings import Settings

TRAIN_TASK = "treelora.train"


def make_celery(settings: Settings) -> Celery:
    return _celery(settings.broker, str(settings.broker_folder))


@lru_cache
def _celery(broker: str, broker_folder: str) -> Celery:
    app = Celery("treelora", broker=broker)
    conf: dict[str, object] = {
        "task_acks_late": True,  # tasks are idempotent: a redelivered job id is safe
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        # a broker restart does not stop a training job: its state is in the database, and its
        # message is not needed once the job is claimed (Celery 6 will default this to True)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }
    if broker.startswith("filesystem"):
        folder = Path(broker_folder)
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    elif broker.startswith("redis"):
        conf["broker_transport_options"] = {"visibility_timeout": 3600}  # a job may train for long
    app.conf.update(conf)
    return app


def enqueue(settings: Settings, job_id: str, countdown: float | None = None) -> None:
    make_celery(settings).send_task(TRAIN_TASK, args=[job_id], countdown=countdown)
