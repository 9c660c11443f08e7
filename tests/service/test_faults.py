"""Faults survived by real processes (uvicorn, Celery workers) on real servers, with the tiny
random Llama so a job trains in seconds: a worker SIGKILLed mid-training, Redis restarted during
a job, PostgreSQL restarted during a job and during requests, S3 refusing writes at a job's
commit. Each job ends exactly once (succeeded, or failed with a clear code), the API answers
reads or a clean 503 (never a 500), and the rows stay consistent: tree versions 1..n with one
evaluation each, no row naming a missing blob, no lock held by a finished job."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.db import session_factory
from api.enums import ACTIVE, TERMINAL
from api.main import create_app
from api.migrate import upgrade
from api.models import Adapter, Evaluation, Job, JobEvent, Stream, Task, TreeVersion, now
from api.services.blobs import referenced
from api.settings import Settings
from api.storage import make_store

from .conftest import ROWS, make_stream, submit
from .procs import PostgresServer, RedisServer, Service, settings_env, wait_for

FINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
OTHER = [{**r, "completion": "pear"} for r in ROWS]
# 90 steps of the tiny model: seconds of training to break into on a fast machine too (36 steps
# could start and end between two heartbeats there, so no beat ever showed the job training)
LONG = {"epochs": 30, "patience": 0, "batch_size": 8}


def broker(redis_url: str) -> str:
    """A Redis database of the suite's server that only this file's workers read (flushed)."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    return url


# -- what every fault must leave: one end per job, consistent rows, no missing blob -------------


def events(db_url: str, job_id: str) -> list[JobEvent]:
    with session_factory(db_url)() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def job_row(db_url: str, job_id: str) -> Job:
    with session_factory(db_url)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def finished(db_url: str, job_id: str, timeout: float, why: str) -> Job:
    return wait_for(lambda: j if (j := job_row(db_url, job_id)).state in TERMINAL else None, timeout, why, every=0.3)


def check_consistent(settings: Settings) -> None:
    """Every stream's versions are 1..tree_version, each with one evaluation, made by a job that
    succeeded once; a finished job has exactly one final event; no lock is held by a finished
    job; every blob a row names is in the object store."""
    store = make_store(settings)
    with session_factory(settings.db_url)() as s:
        for stream in s.scalars(select(Stream)):
            versions = list(s.scalars(select(TreeVersion).where(TreeVersion.stream_id == stream.id)))
            assert sorted(v.version for v in versions) == list(range(1, stream.tree_version + 1)), stream.name
            evals = list(s.scalars(select(Evaluation.tree_version).where(Evaluation.stream_id == stream.id)))
            assert sorted(evals) == sorted(v.version for v in versions)
            adapter_versions = set(s.scalars(select(Adapter.tree_version).where(Adapter.stream_id == stream.id)))
            assert adapter_versions <= {v.version for v in versions}
            succeeded = list(s.scalars(select(Job).where(Job.stream_id == stream.id, Job.state == "succeeded")))
            assert sorted(j.result_version or 0 for j in succeeded) == sorted(v.version for v in versions)
            if stream.active_job_id is not None:
                active = s.get(Job, stream.active_job_id)
                assert active is not None and active.state in ACTIVE, "a finished job holds the stream lock"
        for job in s.scalars(select(Job)):
            finals = s.scalar(select(func.count()).where(JobEvent.job_id == job.id, JobEvent.type.in_(FINAL_EVENTS)))
            assert finals == (1 if job.state in TERMINAL else 0), (job.id, job.state, finals)
            task = s.get(Task, job.task_id)
            assert task is not None and (task.status == "learned") == (job.state == "succeeded")
        missing = [sha for sha in referenced(session=s) if not store.exists(sha)]
    assert missing == [], f"rows name blobs the store does not have: {missing}"


def training(db_url: str, job_id: str) -> Job | None:
    job = job_row(db_url, job_id)
    return job if job.state == "running" and job.progress.get("phase") in ("train", "validate") else None


# -- (a) a worker SIGKILLed mid-training ---------------------------------------------------------


def test_a_killed_celery_worker_is_reported_within_its_lease_and_its_job_done_once(
    wsettings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """Two real Celery workers; the one training the job is SIGKILLed mid-training. The other's
    sweeper reports `job.worker_lost` once the lease runs out and sends the job again; it runs
    from the stream's last committed version and commits exactly once. The lease is short for a
    test but covers a worker's first model load on a loaded machine (native code that holds the
    GIL can delay a beat by seconds there)."""
    settings = wsettings.model_copy(update={"broker_url": broker(redis_url), "lease_s": 20.0, "heartbeat_s": 0.5})
    with Service(settings_env(settings), tmp_path, api=False, workers=2, wait_workers=True) as svc:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            make_stream(client, **LONG)
            job_id = submit(client, "long")["id"]
        running = wait_for(lambda: training(settings.db_url, job_id), 600, "the job never started training")
        assert running.lease_owner is not None
        victim = svc.worker_by_pid(int(running.lease_owner.split(":")[-2]))
        survivor = next(w for w in svc.workers if w is not victim)
        victim.kill()
        killed, killed_at = time.monotonic(), now()

        def lost_event() -> JobEvent | None:
            lost = (e for e in events(settings.db_url, job_id) if e.type == "job.worker_lost")
            return next((e for e in lost if e.data["attempt"] == running.attempt), None)

        lost = wait_for(lost_event, 120, lambda: f"no worker_lost event:\n{survivor.tail()}")
        lost_after = time.monotonic() - killed
        sweep_s = settings.lease_s / 4  # worker.app.SWEEP_S for this lease
        # not before the lease ran out, and at most one sweep after (2 s for a busy machine)
        timeline = [(e.type, e.created_at.isoformat(), e.data) for e in events(settings.db_url, job_id)]
        why = f"lost {lost_after:.2f} s after the kill at {killed_at.isoformat()}: {timeline}"
        assert settings.lease_s - settings.heartbeat_s - 1 <= lost_after <= settings.lease_s + sweep_s + 2, why
        assert lost.data["attempt"] == running.attempt == 1 and lost.data["worker"] == running.lease_owner, why
        done = finished(settings.db_url, job_id, 1200, f"the job did not finish:\n{survivor.tail()}")
    assert done.state == "succeeded" and done.attempt == 2 and done.result_version == 1
    types = [e.type for e in events(settings.db_url, job_id)]
    assert types.count("job.worker_lost") == 1 and types.count("job.started") == 2
    assert types.count("job.succeeded") == 1 and "job.failed" not in types
    started = [e.data["worker"] for e in events(settings.db_url, job_id) if e.type == "job.started"]
    assert int(started[1].split(":")[-2]) == survivor.pid
    check_consistent(settings)


# -- (b) Redis restarted during a job ------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def test_a_redis_restart_during_a_job_loses_no_job(wsettings: Settings, own_redis: RedisServer, tmp_path: Path) -> None:
    """Redis (the broker) stops while a job trains and comes back empty on the same port. The API
    keeps answering reads, says the broker is down in /readyz, and still accepts a task (its job
    waits, queued, for the broker); the running job commits once and the new one is sent again by
    the sweeper once Redis is back, well before the stale-queue resend (`requeue_after_s`)."""
    settings = wsettings.model_copy(
        update={"broker_url": own_redis.url, "lease_s": 10.0, "heartbeat_s": 0.5, "requeue_after_s": 3600.0}
    )
    with (
        Service(settings_env(settings), tmp_path, wait_workers=True) as svc,
        httpx.Client(base_url=svc.base, timeout=60) as c,
    ):
        make_stream(c, **LONG)
        make_stream(c, "t", epochs=1)  # the job submitted while Redis is down: short
        first = submit(c, "first")["id"]
        wait_for(lambda: training(settings.db_url, first), 600, "the job never started training")
        own_redis.stop()
        for path in (
            "/healthz",
            "/v1/streams/s",
            f"/v1/jobs/{first}",
            f"/v1/jobs/{first}/events",
            "/v1/streams/s/tasks",
        ):
            resp = c.get(path)
            assert resp.status_code == 200, (path, resp.text)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
        assert ready.json()["checks"]["database"] == "ok"
        t0 = time.monotonic()
        second = submit(c, "second", OTHER, stream="t")["id"]  # accepted: its job waits for the broker
        assert time.monotonic() - t0 < 15
        assert c.get(f"/v1/jobs/{second}").json()["state"] == "queued"
        time.sleep(2 * settings.lease_s / 4)  # a sweep or two while the broker is down
        back, t_back = now(), time.monotonic()
        own_redis.start()

        def sent_again() -> float | None:
            # The worker logs each send that the broker accepted. A sweep that began just before
            # `back` can still land (its send retries), so the row's `enqueued_at` may predate
            # `back` by a moment: the log, not that time, says whether and when it was sent.
            log = svc.workers[0].tail(10**7)
            landed = any("sent again:" in line and second in line for line in log.splitlines())
            return time.monotonic() - t_back if landed else None

        def not_sent() -> str:
            job = job_row(settings.db_url, second)
            seen = f"back {back}; {job.state}, sent {job.enqueued_at}"
            return f"the job was not sent again ({seen}):\n{svc.workers[0].tail()}"

        # sent by a sweep (every lease / 4) once Redis is back, not after requeue_after_s (an hour)
        after = wait_for(sent_again, 60, not_sent)
        assert after < 30, after
        assert job_row(settings.db_url, second).enqueued_at is not None
        jobs = svc.wait_jobs([first, second], timeout=900)
        api_log = svc.api.tail(10**7) if svc.api else ""
    assert f"could not enqueue {second}" in api_log  # one line, not a traceback: the job is safe
    assert "Traceback" not in api_log, api_log[-3000:]
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert [j["result_version"] for j in jobs] == [1, 1]
    for job_id in (first, second):
        types = [e.type for e in events(settings.db_url, job_id)]
        assert types.count("job.succeeded") == 1 and types.count("job.started") == 1, types
    check_consistent(settings)


# -- (c) PostgreSQL restarted during a job and during requests -----------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        upgrade(server.url)
        yield server
    finally:
        server.close()


READS = ["/v1/streams", "/v1/streams/s", "/v1/streams/s/tasks", "/v1/streams/s/tree", "/v1/jobs"]


def test_a_postgres_restart_gives_clean_503s_and_the_job_ends_once(
    wsettings: Settings, own_postgres: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stops while a job trains and stays down until the worker reaches its commit;
    clients keep sending requests throughout. While it is down every request that needs it gets
    503 `database_unavailable` (never a 500); after it is back they work, and the job commits
    once, on its first attempt (the worker waits for the database rather than losing the job)."""
    settings = wsettings.model_copy(
        update={"database_url": own_postgres.url, "broker_url": broker(redis_url), "lease_s": 60.0, "heartbeat_s": 0.5}
    )
    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def clients(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                for path in READS:
                    resp = c.get(path)
                    code = resp.json().get("error", {}).get("code", "") if resp.status_code >= 400 else ""
                    seen.append((path, resp.status_code, code))
                resp = c.post("/v1/streams", json={"name": f"x{uuid.uuid4().hex[:8]}"})
                seen.append(("POST /v1/streams", resp.status_code, resp.json().get("error", {}).get("code", "")))

    with (
        Service(settings_env(settings), tmp_path, wait_workers=True) as svc,
        httpx.Client(base_url=svc.base, timeout=60) as c,
    ):
        make_stream(c, **LONG)  # long enough that a heartbeat shows it training (3 epochs can end between two)
        job_id = submit(c, "first")["id"]
        wait_for(lambda: training(settings.db_url, job_id), 600, "the job never started training")
        hammer = threading.Thread(target=clients, args=(svc.base,))
        hammer.start()
        try:
            own_postgres.stop()
            down = len(seen)
            resp = c.get("/v1/streams/s")
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "database_unavailable", resp.text
            worker = svc.workers[0]
            wait_for(  # the worker has trained and reached its final write
                lambda: True if f"job {job_id}" in worker.tail(20000) else None,
                300,
                f"the worker never reached its commit:\n{worker.tail()}",
                every=0.5,
            )
            own_postgres.start()
            up = len(seen)
            wait_for(lambda: True if c.get("/v1/streams/s").status_code == 200 else None, 30, "no recovery")
            time.sleep(1)
        finally:
            stop.set()
            hammer.join(60)
        done = finished(settings.db_url, job_id, 300, f"the job did not finish:\n{svc.workers[0].tail()}")
        assert c.get("/readyz").status_code == 200
        api_log = svc.api.tail(10**7) if svc.api else ""
    bad = [s for s in seen if s[1] not in (200, 201) and (s[1], s[2]) != (503, "database_unavailable")]
    assert bad == [], bad[:10]
    assert any(s[1] == 503 for s in seen[down:up]), "no request saw the database down"
    assert seen[-1][1] in (200, 201)
    assert "Traceback" not in api_log, api_log[-3000:]
    assert done.state == "succeeded" and done.attempt == 1 and done.result_version == 1, done.error_message
    types = [e.type for e in events(settings.db_url, job_id)]
    assert types.count("job.succeeded") == 1 and "job.worker_lost" not in types, types
    check_consistent(settings)


# -- (d) S3 refusing writes at a job's commit ----------------------------------------------------


def deny_writes(s3: Any, bucket: str) -> None:
    """A bucket policy that refuses every write (PutObject, and CopyObject onto a key) to anyone:
    the S3 server answers AccessDenied; reads go on."""
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:PutObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


def test_s3_refusing_writes_at_a_commit_fails_the_job_cleanly(
    wsettings: Settings, redis_url: str, s3_client: Any, tmp_path: Path
) -> None:
    """A job trains while the bucket refuses writes: its commit (the first write it makes) is
    refused, the job fails with `blob_write_failed` naming the cause, and the stream stays at
    its version; an upload meanwhile is 503 and stores no row; once writes are allowed again the
    next job commits."""
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    settings = wsettings.model_copy(update={"s3_bucket": bucket, "broker_url": broker(redis_url), "lease_s": 20.0})
    make_store(settings)  # creates the bucket
    try:
        with (
            Service(settings_env(settings), tmp_path, wait_workers=True) as svc,
            httpx.Client(base_url=svc.base, timeout=60) as c,
        ):
            make_stream(c, epochs=2, patience=0, batch_size=8)
            first = submit(c, "first")["id"]
            assert [j["state"] for j in svc.wait_jobs([first], timeout=300)] == ["succeeded"]
            second = submit(c, "second", OTHER)["id"]
            deny_writes(s3_client, bucket)  # before the job's commit: it reads its data, trains, then writes
            failed = finished(settings.db_url, second, 300, f"the job did not finish:\n{svc.workers[0].tail()}")
            assert failed.state == "failed" and failed.error_code == "blob_write_failed", failed.error_message
            assert "AccessDenied" in (failed.error_message or "")
            assert c.get("/v1/streams/s").json()["tree_version"] == 1
            assert c.get("/v1/streams/s/tree").json()["version"] == 1
            pred = c.post(
                "/v1/streams/s/predict", json={"inputs": [ROWS[0]["prompt"]], "task": "first", "max_new_tokens": 2}
            )
            assert pred.status_code == 200 and pred.json()["tree_version"] == 1, pred.text  # reads are served
            tasks_before = len(c.get("/v1/streams/s/tasks").json()["data"])
            refused = c.post(
                "/v1/streams/s/tasks",
                files={"file": ("t.jsonl", b'{"prompt": "p", "completion": "c"}\n' * 10, "application/jsonl")},
                data={"name": "during"},
            )
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "blob_write_failed", refused.text
            assert len(c.get("/v1/streams/s/tasks").json()["data"]) == tasks_before
            s3_client.delete_bucket_policy(Bucket=bucket)
            third = submit(c, "third", [{**r, "completion": "plum"} for r in ROWS])["id"]
            done = svc.wait_jobs([third], timeout=300)
            assert done[0]["state"] == "succeeded" and done[0]["result_version"] == 2, done
            api_log = svc.api.tail(10**7) if svc.api else ""
        assert "Traceback" not in api_log, api_log[-3000:]
        types = [e.type for e in events(settings.db_url, second)]
        assert types.count("job.failed") == 1 and "job.succeeded" not in types
        check_consistent(settings)
    finally:
        with contextlib.suppress(ClientError):  # gone already when the test got that far
            s3_client.delete_bucket_policy(Bucket=bucket)
        store = make_store(settings)
        for key in store.keys():
            s3_client.delete_object(Bucket=bucket, Key=settings.s3_prefix + key)
        s3_client.delete_bucket(Bucket=bucket)
