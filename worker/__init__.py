"""Celery worker: one named task per job; the job's body lives in `worker.runner`."""
