"""Liveness, readiness (database, object store, broker) and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text

from ..db import session_factory
from ..models import Job, Stream, Task
from ..queue import make_celery
from ..settings import Settings

router = APIRouter(tags=["health"])
REGISTRY = CollectorRegistry()
REQUESTS = Counter("treelora_http_requests", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("treelora_http_request_seconds", "HTTP request latency", ["route"], registry=REGISTRY)


class DbCollector(Collector):
    """Jobs by state, streams and tasks (read from the database at scrape time) and the serving
    side's adapter cache and batching counters."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.inference: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.settings is None:
            return
        jobs = GaugeMetricFamily("treelora_jobs", "Jobs by state", labels=["state"])
        with session_factory(self.settings.db_url)() as session:
            for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
                jobs.add_metric([state], n)
            n_streams = session.scalar(select(func.count()).select_from(Stream)) or 0
            n_tasks = session.scalar(select(func.count()).select_from(Task)) or 0
        yield jobs
        yield GaugeMetricFamily("treelora_streams", "Streams", value=n_streams)
        yield GaugeMetricFamily("treelora_tasks", "Tasks", value=n_tasks)
        if self.inference is not None:
            for name, value in self.inference.stats().items():
                yield GaugeMetricFamily(f"treelora_{name}", name.replace("_", " "), value=value)


DB_COLLECTOR = DbCollector()
REGISTRY.register(DB_COLLECTOR)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str = Field(description="ok, or unavailable (503) when a check failed")
    checks: dict[str, str] = Field(description="database, object_store, broker: ok or the error's type")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is down (its check says which)"}},
)
def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        with session_factory(settings.db_url)() as session:
            session.execute(text("select 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        request.app.state.store.ping()
        checks["object_store"] = "ok"
    except Exception as exc:
        checks["object_store"] = f"error: {type(exc).__name__}"
    try:
        with make_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
