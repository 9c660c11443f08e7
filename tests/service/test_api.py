"""The HTTP API on real PostgreSQL, Redis and S3 (no worker consumes here: jobs stay queued)."""

from __future__ import annotations

import json

import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings

from .conftest import jsonl, s3_keys

ROWS = [{"prompt": f"Item {i}: which class?", "completion": "alpha" if i % 2 else "beta"} for i in range(20)]


def test_streams_create_get_and_paginate(client: TestClient) -> None:
    made = [client.post("/v1/streams", json={"name": f"s{i}", "train": {"epochs": 1}}).json() for i in range(3)]
    assert made[0]["strategy"] == "treelora" and made[0]["config"]["train"]["epochs"] == 1
    assert made[0]["tree_version"] == 0 and made[0]["base_model"] == "smollm2-135m-instruct"
    assert (made[0]["tasks_learned"], made[0]["tasks_pending"]) == (0, 0)
    assert client.get(f"/v1/streams/{made[1]['id']}").json()["name"] == "s1"
    assert client.get("/v1/streams/s2").json()["id"] == made[2]["id"]  # by name too
    first = client.get("/v1/streams?limit=2").json()
    assert [s["name"] for s in first["data"]] == ["s0", "s1"] and first["has_more"]
    rest = client.get(f"/v1/streams?limit=2&after={first['data'][-1]['id']}").json()
    assert [s["name"] for s in rest["data"]] == ["s2"] and not rest["has_more"]


def test_submit_task_stores_splits_and_queues_a_job(client: TestClient, settings: Settings) -> None:
    client.post("/v1/streams", json={"name": "s"})
    resp = client.post(
        "/v1/streams/s/tasks",
        files={"file": ("t.jsonl", jsonl(ROWS), "application/jsonl")},
        data={"name": "classes", "metric": "exact_match"},
    )
    assert resp.status_code == 202, resp.text
    task, job = resp.json()["task"], resp.json()["job"]
    assert (task["n_train"], task["n_eval"], task["eval_source"]) == (16, 4, "holdout")
    assert task["status"] == "pending" and job["state"] == "queued" and job["attempt"] == 0
    assert len(s3_keys(settings)) == 2  # train and eval splits, content-addressed
    broker = redis.Redis.from_url(settings.broker)
    assert job["id"] in broker.lindex("celery", 0).decode()  # the job id went to the broker
    assert client.get(f"/v1/jobs/{job['id']}").json()["progress"]["phase"] == "queued"
    listed = client.get("/v1/jobs?stream_id=s&state=queued").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get("/v1/streams/s/tasks/classes").json()["id"] == task["id"]
    # same bytes again under another name: the store keeps one copy
    again = client.post("/v1/streams/s/tasks", files={"file": ("t.jsonl", jsonl(ROWS), "x")}, data={"name": "again"})
    assert len(s3_keys(settings)) == 2
    # newest first on request, and its cursor pages towards older jobs
    newest = client.get("/v1/jobs?stream_id=s&order=desc&limit=1").json()
    assert [j["id"] for j in newest["data"]] == [again.json()["job"]["id"]] and newest["has_more"]
    older = client.get(f"/v1/jobs?stream_id=s&order=desc&after={newest['data'][0]['id']}").json()
    assert [j["id"] for j in older["data"]] == [job["id"]] and not older["has_more"]
    assert [j["id"] for j in client.get("/v1/jobs?stream_id=s").json()["data"]] == [job["id"], newest["data"][0]["id"]]


def test_cancel_a_queued_job_and_follow_its_events(client: TestClient) -> None:
    client.post("/v1/streams", json={"name": "s"})
    job = client.post("/v1/streams/s/tasks", files={"file": ("t", jsonl(ROWS), "x")}, data={"name": "t"}).json()["job"]
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    assert client.get("/v1/streams/s/tasks/t").json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["job.queued", "job.cancelled"]
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"accept": "text/event-stream"}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())  # the job is final: the stream ends by itself
    types = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert types == ["job.queued", "job.cancelled", "progress"]
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1]["state"] == "cancelled"


def test_tree_evaluations_and_adapters_of_an_empty_stream(client: TestClient) -> None:
    client.post("/v1/streams", json={"name": "s"})
    tree = client.get("/v1/streams/s/tree").json()
    assert tree["version"] == 0 and tree["nodes"] == []
    assert client.get("/v1/streams/s/evaluations").json()["R"] == []
    assert client.get("/v1/streams/s/adapters").json()["data"] == []


def test_health_readiness_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "object_store": "ok",
        "broker": "ok",
    }
    client.post("/v1/streams", json={"name": "s"})
    metrics = client.get("/metrics").text
    assert "treelora_streams 1.0" in metrics
    assert 'treelora_http_requests_total{method="POST",route="/v1/streams",status="201"}' in metrics
    spec = client.get("/openapi.json").json()
    assert "/v1/streams/{stream_id}/tasks" in spec["paths"] and "/v1/jobs/{job_id}/cancel" in spec["paths"]


def test_readiness_fails_when_the_broker_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503 and resp.json()["checks"]["broker"].startswith("error")
