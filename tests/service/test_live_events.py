"""Live event streams on a real uvicorn process and PostgreSQL: 64 open SSE listeners beside
predict load pin no database connection (no pool timeout, predict answers as fast as without
them), and every listener still gets the job's next event and its end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.db import busy_connections, session_factory
from api.services import runs
from api.settings import Settings
from worker.runner import run_job

from .conftest import ROWS, jsonl, make_stream, submit
from .procs import Proc, Service, settings_env

LISTENERS = 64
PROMPT = "Item 3 of the list: what is it?"


@pytest.fixture
def api(wsettings: Settings, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    with Service(settings_env(wsettings), tmp_path, workers=0) as svc:
        assert svc.api is not None
        yield svc.base, svc.api


def listen(base: str, job_id: str, opened: threading.Barrier, out: list[str]) -> None:
    """Follow the job's SSE stream to its end; pass the barrier once the first progress arrives."""
    timeout = httpx.Timeout(10, read=60)
    with httpx.stream(
        "GET", f"{base}/v1/jobs/{job_id}/events", headers={"accept": "text/event-stream"}, timeout=timeout
    ) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append(kind)
                if kind == "progress" and out.count("progress") == 1:
                    opened.wait(timeout=60)


def predict_load(base: str, seconds: float, clients: int = 4) -> list[float]:
    """`clients` threads sending one-input predicts back to back for `seconds`: the latencies."""

    def one_client(_: int) -> list[float]:
        lat = []
        with httpx.Client(timeout=60) as c:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                resp = c.post(
                    f"{base}/v1/streams/s/predict", json={"inputs": [PROMPT], "task": "apples", "max_new_tokens": 2}
                )
                assert resp.status_code == 200, resp.text
                lat.append(time.perf_counter() - t0)
        return lat

    with ThreadPoolExecutor(clients) as pool:
        return sorted(x for lat in pool.map(one_client, range(clients)) for x in lat)


def median(lat: list[float]) -> float:
    return lat[len(lat) // 2]


def test_64_listeners_pin_no_connection_and_do_not_slow_predict(
    wclient: TestClient, wsettings: Settings, api: tuple[str, Proc]
) -> None:
    base, proc = api
    make_stream(wclient)
    assert run_job(submit(wclient, "apples")["id"], wsettings) == "done"
    waiting = submit(wclient, "pears", [{**r, "completion": "pear"} for r in ROWS])["id"]  # no worker: stays queued
    predict_load(base, 1.0, clients=1)  # warm up: base model and adapters loaded
    alone = predict_load(base, 3.0)

    opened = threading.Barrier(LISTENERS + 1)
    seen: list[list[str]] = [[] for _ in range(LISTENERS)]
    threads = [threading.Thread(target=listen, args=(base, waiting, opened, seen[i])) for i in range(LISTENERS)]
    for t in threads:
        t.start()
    opened.wait(timeout=60)  # every listener has its stream open and has had its first progress
    assert busy_connections(wsettings.db_url) <= 4  # not one per listener
    beside = predict_load(base, 3.0)
    assert busy_connections(wsettings.db_url) <= 4

    asked = time.perf_counter()
    assert httpx.post(f"{base}/v1/jobs/{waiting}/cancel").status_code == 200
    for t in threads:
        t.join(timeout=max(0.1, asked + 10 - time.perf_counter()))
    assert not any(t.is_alive() for t in threads), "a listener did not see the job end"
    assert all("job.cancelled" in s and s.count("progress") >= 2 for s in seen), seen[0]
    assert all(s.count("job.queued") == 1 for s in seen)

    log = proc.tail(10**7)
    assert "QueuePool limit" not in log and "TimeoutError" not in log
    # Listeners that held connections or polled per listener would slow every predict, so the
    # median shows it. The p99 target (1.5x) is measured by benchmarks/reliability_load.py: a few
    # seconds of load give a p99 that one scheduling hiccup on a busy 2-core machine decides.
    assert median(beside) <= 1.5 * median(alone) + 0.05, (median(alone), median(beside))


def test_live_stream_resumes_and_follows_a_job_to_its_end(client: TestClient, settings: Settings) -> None:
    """Two listeners (one resuming after the first event) see the same events in order as the
    job's worker writes them, each once, then the final progress, and the streams end."""
    client.post("/v1/streams", json={"name": "s"})
    job = client.post("/v1/streams/s/tasks", files={"file": ("t", jsonl(ROWS), "x")}, data={"name": "t"}).json()["job"]
    first = client.get(f"/v1/jobs/{job['id']}/events").json()["data"][0]["id"]
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {"all": [], "resumed": []}

    def follow(name: str, headers: dict[str, str]) -> None:
        headers = {"accept": "text/event-stream", **headers}
        with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as resp:
            kind = ""
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    got[name].append((kind, json.loads(line[6:])))

    threads = [
        threading.Thread(target=follow, args=("all", {})),
        threading.Thread(target=follow, args=("resumed", {"last-event-id": str(first)})),
    ]
    for t in threads:
        t.start()
    with session_factory(settings.db_url)() as s:
        assert runs.claim(session=s, job_id=job["id"], owner="w", lease_s=60).outcome == "claimed"
        time.sleep(1.2)  # the listeners see the running job
        for epoch in range(3):
            runs.heartbeat(
                session=s,
                job_id=job["id"],
                owner="w",
                lease_s=60,
                progress={"phase": "train", "epoch": epoch},
                events=[("epoch.validated", {"epoch": epoch})],
            )
        runs.fail(session=s, job_id=job["id"], owner="w", code="internal", message="boom")
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    epochs = ["epoch.validated"] * 3
    assert [k for k, _ in got["all"] if k != "progress"] == ["job.queued", "job.started", *epochs, "job.failed"]
    assert [k for k, _ in got["resumed"] if k != "progress"] == ["job.started", *epochs, "job.failed"]
    for seen in got.values():
        progress = [d for k, d in seen if k == "progress"]
        assert progress[-1]["state"] == "failed" and any(p["state"] == "running" for p in progress)
        ids = [d["id"] for k, d in seen if k != "progress"]
        assert ids == sorted(set(ids))  # each event once, in order
