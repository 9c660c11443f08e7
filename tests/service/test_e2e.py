"""End to end with everything real: uvicorn and a Celery worker as processes, PostgreSQL, Redis,
S3, SmolLM2-135M-Instruct and three real WordNet tasks."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from treelora_core.models import load_base

from .conftest import task_files
from .procs import Service, production_env

pytestmark = pytest.mark.slow


@pytest.fixture
def service(pg_server_url: str, redis_url: str, s3_env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    env, _ = production_env(
        pg_server_url=pg_server_url, redis_url=redis_url, broker_db=2, s3_env=s3_env, data_dir=tmp_path
    )
    with Service(env, tmp_path, ready_timeout=120) as svc:
        yield svc


def sse_events(base: str, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Follow a job's live event stream until it ends (the job reached a final state)."""
    out = []
    with httpx.stream(
        "GET",
        f"{base}/v1/jobs/{job_id}/events",
        headers={"accept": "text/event-stream"},
        timeout=httpx.Timeout(10, read=900),
    ) as resp:
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_three_real_tasks_end_to_end(service: Service, wordnet_tasks: list[Any], tmp_path: Path) -> None:
    base = service.base
    t0 = time.time()
    httpx.post(f"{base}/v1/streams", json={"name": "wordnet", "train": {"epochs": 1, "max_length": 96}}).json()
    jobs = []
    for i, task in enumerate(wordnet_tasks):
        resp = httpx.post(f"{base}/v1/streams/wordnet/tasks", files=task_files(task), data={"name": f"wn{i}"})
        assert resp.status_code == 202, resp.text
        jobs.append(resp.json()["job"]["id"])
    events = sse_events(base, jobs[0])
    phases = {d.get("phase") for k, d in events if k == "progress"}
    assert "train" in phases and events[-1][1]["state"] == "succeeded"
    assert "job.succeeded" in [k for k, _ in events]
    done = service.wait_jobs(jobs)
    elapsed = time.time() - t0
    assert [j["state"] for j in done] == ["succeeded"] * 3, [j.get("error") for j in done]
    assert [j["result_version"] for j in done] == [1, 2, 3]

    tree = httpx.get(f"{base}/v1/streams/wordnet/tree").json()
    assert tree["version"] == 3 and sorted(n["task"] for n in tree["nodes"] if n["task"]) == ["wn0", "wn1", "wn2"]
    ev = httpx.get(f"{base}/v1/streams/wordnet/evaluations").json()
    R = ev["R"]
    assert len(R) == 3 and all(len(row) == 3 for row in R)
    assert all(R[t][i] is not None for t in range(3) for i in range(t + 1)) and R[0][1] is None
    assert ev["op"] is not None and ev["forgetting"] == 0.0  # treelora freezes old paths

    prompt = wordnet_tasks[1].test[0].prompt
    by_id = httpx.post(
        f"{base}/v1/streams/wordnet/predict", json={"inputs": [prompt], "task": "wn1"}, timeout=120
    ).json()
    assert by_id["tree_version"] == 3 and by_id["predictions"][0]["task"] == "wn1"
    assert by_id["predictions"][0]["path"][-1]["hi"] == tree["blocks"]
    prompts = [e.prompt for e in wordnet_tasks[2].test[:4]]
    auto = httpx.post(f"{base}/v1/streams/wordnet/predict", json={"inputs": prompts, "task": "auto"}, timeout=120)
    preds = auto.json()["predictions"]
    assert all(p["task"] in ("wn0", "wn1", "wn2") and 0 < p["confidence"] <= 1 for p in preds)

    archive = httpx.get(f"{base}/v1/streams/wordnet/tasks/wn1/adapter", timeout=120)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path / "peft", filter="data")
    from peft import PeftModel

    model, tok = load_base()  # a fresh copy: PEFT wraps the model it is given
    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "peft" / "wn1"))
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = peft_model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text == by_id["predictions"][0]["output"]  # the exported adapter answers as the service does
    print(f"\nend-to-end: 3 tasks trained, evaluated and committed in {elapsed:.1f}s; R={R}")
