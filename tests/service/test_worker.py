"""The job lifecycle on real PostgreSQL and S3, with `run_job` called in-process on a tiny random
Llama (the end-to-end test runs SmolLM2 in a real Celery worker): commit, ordering, cancel,
failure, the time limit, few event rows, and a lost worker's job taken over exactly once (a real
Celery worker killed mid-training is in test_faults.py)."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.db import session_factory
from api.errors import Conflict
from api.models import Job, JobEvent, Stream, TreeVersion, now
from api.services import runs
from api.settings import Settings
from worker.heartbeat import EPOCH_EVENT_S, thin
from worker.runner import run_job

from .conftest import ROWS, make_stream, submit


def stream_row(settings: Settings, name: str = "s") -> Stream:
    with session_factory(settings.db_url)() as s:
        row = s.scalar(select(Stream).where(Stream.name == name))
        assert row is not None
        return row


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_factory(settings.db_url)() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_jobs_commit_versions_in_order_and_rerun_is_a_no_op(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient)
    j1 = submit(wclient, "apples")
    j2 = submit(wclient, "pears", [{**r, "completion": "pear"} for r in ROWS])
    counts = wclient.get("/v1/streams/s").json()
    assert (counts["tasks_learned"], counts["tasks_pending"]) == (0, 2)
    assert run_job(j2["id"], wsettings) == "wait"  # the earlier job of the stream goes first
    assert run_job(j1["id"], wsettings) == "done"
    assert run_job(j2["id"], wsettings) == "done"
    assert run_job(j1["id"], wsettings) == "skip"  # a redelivered message changes nothing
    jobs = [wclient.get(f"/v1/jobs/{j['id']}").json() for j in (j1, j2)]
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"]
    assert [j["result_version"] for j in jobs] == [1, 2] and jobs[0]["attempt"] == 1
    assert jobs[1]["report"]["placement"]["relative"] == "apples"
    assert stream_row(wsettings).tree_version == 2 and stream_row(wsettings).active_job_id is None
    listed = wclient.get("/v1/streams").json()["data"][0]
    assert (listed["tasks_learned"], listed["tasks_pending"]) == (2, 0)  # counted per stream in the list too
    ev = wclient.get("/v1/streams/s/evaluations").json()
    assert ev["tasks"] == ["apples", "pears"] and ev["R"][0][1] is None and len(ev["R"]) == 2
    assert ev["R"][1][0] == ev["R"][0][0]  # the first task's path never changed: no forgetting
    tree = wclient.get("/v1/streams/s/tree").json()
    assert {n["task"] for n in tree["nodes"] if n["task"]} == {"apples", "pears"}
    assert tree["similarity"]["pears"]["apples"] > 0
    adapters = wclient.get("/v1/streams/s/adapters").json()["data"]
    assert {a["node"] for a in adapters} == {n["id"] for n in tree["nodes"]}
    by_job = {a["created_by"] for a in adapters}
    assert by_job <= {j1["id"], j2["id"]} and j2["id"] in by_job
    path = wclient.get("/v1/streams/s/tasks/pears/path").json()
    assert path["segments"][0]["lo"] == 0 and path["segments"][-1]["hi"] == tree["blocks"]
    assert wclient.get("/v1/streams/s/tasks/pears/similar").json()["similar"][0]["task"] == "apples"
    events = [e["type"] for e in wclient.get(f"/v1/jobs/{j1['id']}/events").json()["data"]]
    assert events[:2] == ["job.queued", "job.started"] and "task.learned" in events and events[-1] == "job.succeeded"


def test_cancel_stops_a_running_job_within_seconds(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient, epochs=100, patience=0)  # the most a stream accepts
    job = submit(wclient, "long", ROWS * 4)
    t = threading.Thread(target=run_job, args=(job["id"], wsettings))
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        seen = wclient.get(f"/v1/jobs/{job['id']}").json()
        # a training beat (a validation beat has no eta): on a fast machine the first beat with
        # a step can fall on a validation pass
        beat = seen["progress"]
        if seen["state"] == "running" and beat.get("step", 0) > 0 and beat.get("phase") == "train":
            break
        time.sleep(0.1)
    assert {"step", "total", "phase", "eta_s"} <= set(seen["progress"]) and seen["progress"]["phase"] == "train"
    asked = time.time()
    assert wclient.post(f"/v1/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    t.join(timeout=30)
    done = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "cancelled" and time.time() - asked < 5
    assert stream_row(wsettings).tree_version == 0 and stream_row(wsettings).active_job_id is None
    assert wclient.get("/v1/streams/s/tasks/long").json()["status"] == "cancelled"


def test_a_failure_records_its_error_and_keeps_the_last_good_version(
    wclient: TestClient, wsettings: Settings, s3_client: Any
) -> None:
    make_stream(wclient)
    assert run_job(submit(wclient, "good")["id"], wsettings) == "done"
    bad = submit(wclient, "lost-data", [{**r, "completion": "plum"} for r in ROWS])
    task = wclient.get("/v1/streams/s/tasks/lost-data").json()
    key = f"{wsettings.s3_prefix}sha256/{task['train_sha256'][:2]}/{task['train_sha256']}"
    s3_client.delete_object(Bucket=wsettings.s3_bucket, Key=key)  # a fault we cannot cause otherwise
    assert run_job(bad["id"], wsettings) == "done"
    failed = wclient.get(f"/v1/jobs/{bad['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "blob_missing"
    assert stream_row(wsettings).tree_version == 1 and stream_row(wsettings).active_job_id is None
    with session_factory(wsettings.db_url)() as s:
        assert s.scalar(select(TreeVersion.version).order_by(TreeVersion.version.desc())) == 1
    assert run_job(submit(wclient, "after")["id"], wsettings) == "done"  # the stream goes on
    assert stream_row(wsettings).tree_version == 2


def test_a_lost_workers_job_is_taken_over_and_finishes_once(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient)
    job = submit(wclient, "orphan")
    with session_factory(wsettings.db_url)() as s:
        assert runs.claim(session=s, job_id=job["id"], owner="dead-worker", lease_s=60).outcome == "claimed"
        assert runs.claim(session=s, job_id=job["id"], owner="other", lease_s=60).outcome == "skip"  # lease held
        assert runs.sweep(session=s, settings=wsettings) == []
        s.execute(update(Job).where(Job.id == job["id"]).values(lease_expires_at=now() - timedelta(seconds=1)))
        s.commit()
        assert runs.sweep(session=s, settings=wsettings) == [job["id"]]  # the sweeper sends it again
    lost = [e for e in events(wsettings, job["id"]) if e.type == "job.worker_lost"]
    assert len(lost) == 1 and lost[0].data["worker"] == "dead-worker" and lost[0].data["then"] == "queued"
    assert wclient.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"  # re-queued, not "running"
    with session_factory(wsettings.db_url)() as s:
        assert runs.sweep(session=s, settings=wsettings) == []  # reported once
    assert run_job(job["id"], wsettings) == "done"
    done = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "succeeded" and done["attempt"] == 2
    with session_factory(wsettings.db_url)() as s, pytest.raises(Conflict):  # the dead worker wakes up late
        runs.commit_version(
            session=s,
            job_id=job["id"],
            owner="dead-worker",
            base_version=0,
            manifest={},
            tree={},
            similarity={},
            paths={},
            adapters=[],
            scores={},
            eval_seconds=0,
            report={},
        )
    with session_factory(wsettings.db_url)() as s:
        assert len(list(s.scalars(select(TreeVersion)))) == 1


def test_streams_hold_separate_locks(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient, name="a")
    make_stream(wclient, name="b")
    ja, jb = submit(wclient, "t", stream="a"), submit(wclient, "t", stream="b")
    with session_factory(wsettings.db_url)() as s:
        assert runs.claim(session=s, job_id=ja["id"], owner="w1", lease_s=60).outcome == "claimed"
        assert runs.claim(session=s, job_id=jb["id"], owner="w2", lease_s=60).outcome == "claimed"
        assert {r.active_job_id for r in s.scalars(select(Stream))} == {ja["id"], jb["id"]}


def test_a_job_that_loses_its_worker_three_times_fails_with_worker_lost(
    wclient: TestClient, wsettings: Settings
) -> None:
    make_stream(wclient)
    job = submit(wclient, "cursed")
    with session_factory(wsettings.db_url)() as s:
        for attempt in range(1, runs.MAX_ATTEMPTS + 1):
            assert runs.claim(session=s, job_id=job["id"], owner=f"w{attempt}", lease_s=60).outcome == "claimed"
            s.execute(update(Job).where(Job.id == job["id"]).values(lease_expires_at=now() - timedelta(seconds=1)))
            s.commit()
            sent = runs.sweep(session=s, settings=wsettings)
            assert sent == ([job["id"]] if attempt < runs.MAX_ATTEMPTS else [])
    failed = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "worker_lost" and failed["attempt"] == 3
    lost = [e.data["then"] for e in events(wsettings, job["id"]) if e.type == "job.worker_lost"]
    assert lost == ["queued", "queued", "failed"] and events(wsettings, job["id"])[-1].type == "job.failed"
    assert stream_row(wsettings).active_job_id is None
    assert wclient.get("/v1/streams/s/tasks/cursed").json()["status"] == "failed"


def test_a_job_past_its_time_limit_fails_with_time_limit(wclient: TestClient, wsettings: Settings) -> None:
    settings = wsettings.model_copy(update={"job_time_limit_s": 1.0})
    make_stream(wclient, epochs=100, patience=0)
    job = submit(wclient, "endless", ROWS * 8)
    t0 = time.monotonic()
    assert run_job(job["id"], settings) == "done"
    assert time.monotonic() - t0 < 1.0 + 30  # the limit, a beat, and loading the model on a busy machine
    failed = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "time_limit", failed
    assert "1 s" in failed["error"]["message"] and failed["progress"]["phase"] == "failed"
    assert stream_row(wsettings).tree_version == 0 and stream_row(wsettings).active_job_id is None
    assert wclient.get("/v1/streams/s/tasks/endless").json()["status"] == "failed"
    types = [e.type for e in events(wsettings, job["id"])]
    assert types.count("job.failed") == 1 and "job.succeeded" not in types


def test_event_rows_are_throttled_and_progress_stays_live(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient, epochs=20, patience=0, batch_size=8)
    job = submit(wclient, "many-epochs", ROWS[:10])  # one step per epoch
    t0 = time.monotonic()
    assert run_job(job["id"], wsettings) == "done"
    took = time.monotonic() - t0
    rows = events(wsettings, job["id"])
    epochs = [e.data["epoch"] for e in rows if e.type == "epoch.validated"]
    assert 1 <= len(epochs) <= 2 + took / EPOCH_EVENT_S and len(epochs) < 20  # not one row per epoch
    assert epochs[0] == 0 and epochs[-1] == 19  # the first and the last epoch are kept
    # every training step's loss is on record: a throttled epoch's steps ride on the next event
    steps = [pt for e in rows if e.type == "epoch.validated" for pt in e.data["train_steps"]]
    assert len(steps) == 20 and [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert all(math.isfinite(loss) for _, loss in steps)
    phases = [e.data["phase"] for e in rows if e.type == "job.phase"]
    assert phases == ["train", "evaluating", "committing"]
    types = [e.type for e in rows]
    assert types[:2] == ["job.queued", "job.started"] and types[-1] == "job.succeeded"
    assert len(rows) <= 10 + took / EPOCH_EVENT_S


def test_thin_keeps_the_ends_and_at_most_the_asked_points() -> None:
    pts = [[i, float(i)] for i in range(1, 501)]
    out = thin(pts, 64)
    assert len(out) == 64 and out[0] == [1, 1.0] and out[-1] == [500, 500.0]
    assert [p[0] for p in out] == sorted({p[0] for p in out})  # in order, no repeats
    assert thin(pts[:10], 64) == pts[:10]
