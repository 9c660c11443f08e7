"""Bad uploads and requests: each gets a 4xx in the one error shape (with the line where it
applies), and nothing is stored: no rows, no objects."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings

from .conftest import jsonl, row_counts, s3_keys

GOOD = [{"prompt": f"Item {i}: which class?", "completion": "alpha"} for i in range(12)]
GOOD_FILE = jsonl(GOOD)


def upload(body: bytes, name: str = "t1", **extra: Any) -> dict[str, Any]:
    files: dict[str, Any] = {"file": ("train.jsonl", body, "application/jsonl")}
    if "eval_file" in extra:
        files["eval_file"] = ("eval.jsonl", extra.pop("eval_file"), "application/jsonl")
    return {"files": files, "data": {"name": name, **extra}}


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


OK = '{"prompt": "p", "completion": "c"}'
CASES: list[tuple[str, str, str, dict[str, Any], int, str, str | None, int | None]] = [
    (
        "broken JSON line",
        "POST",
        "/v1/streams/s/tasks",
        upload(lines(OK, '{"prompt": "a", "completion"', OK)),
        422,
        "invalid_dataset",
        "file",
        2,
    ),
    (
        "missing field",
        "POST",
        "/v1/streams/s/tasks",
        upload(lines(OK, OK, '{"prompt": "only a prompt"}')),
        422,
        "invalid_dataset",
        "file",
        3,
    ),
    ("empty file", "POST", "/v1/streams/s/tasks", upload(b""), 422, "invalid_dataset", "file", None),
    (
        "non-UTF-8 bytes",
        "POST",
        "/v1/streams/s/tasks",
        upload(OK.encode() + b'\n{"prompt": "\xff\xfe", "completion": "c"}\n'),
        422,
        "invalid_dataset",
        "file",
        2,
    ),
    ("oversized file", "POST", "/v1/streams/s/tasks", upload(GOOD_FILE * 200), 413, "too_large", "file", None),
    (
        "over-long example",
        "POST",
        "/v1/streams/s/tasks",
        upload(lines(OK, '{"prompt": "' + "x" * 21_000 + '", "completion": "c"}')),
        422,
        "invalid_dataset",
        "file",
        2,
    ),
    ("array of non-objects", "POST", "/v1/streams/s/tasks", upload(b"[1, 2]"), 422, "invalid_dataset", "file", 1),
    (
        "non-string completion",
        "POST",
        "/v1/streams/s/tasks",
        upload(lines(OK, '{"prompt": "p", "completion": 7}')),
        422,
        "invalid_dataset",
        "file",
        2,
    ),
    (
        "bad eval file",
        "POST",
        "/v1/streams/s/tasks",
        upload(GOOD_FILE, eval_file=lines(OK, "not json")),
        422,
        "invalid_dataset",
        "eval_file",
        2,
    ),
    (
        "too few examples to hold out",
        "POST",
        "/v1/streams/s/tasks",
        upload(lines(OK, OK)),
        422,
        "invalid",
        "file",
        None,
    ),
    ("unknown stream", "POST", "/v1/streams/nope/tasks", upload(GOOD_FILE), 404, "not_found", "stream_id", None),
    ("unknown metric", "POST", "/v1/streams/s/tasks", upload(GOOD_FILE, metric="bleu"), 422, "invalid", "metric", None),
    (
        "hostile task name",
        "POST",
        "/v1/streams/s/tasks",
        upload(GOOD_FILE, name="../../etc/passwd"),
        422,
        "invalid",
        "name",
        None,
    ),
    (
        "task name with a NUL",
        "POST",
        "/v1/streams/s/tasks",
        upload(GOOD_FILE, name="a\x00b"),
        422,
        "invalid",
        "name",
        None,
    ),
    ("missing file field", "POST", "/v1/streams/s/tasks", {"data": {"name": "t1"}}, 422, "invalid", "file", None),
    (
        "unknown strategy",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "strategy": "magic"}},
        422,
        "invalid",
        "strategy",
        None,
    ),
    (
        "negative rank",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "lora": {"r": -4}}},
        422,
        "invalid",
        "lora.r",
        None,
    ),
    (
        "mistyped config",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "train": {"epochs": "many"}}},
        422,
        "invalid",
        "train.epochs",
        None,
    ),
    (
        "unknown config field",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "train": {"epoch": 2}}},
        422,
        "invalid",
        "train.epoch",
        None,
    ),
    (
        "negative EWC lambda",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "strategy": "ewc", "ewc": {"lam": -1}}},
        422,
        "invalid",
        "ewc.lam",
        None,
    ),
    (
        "unknown lora_top field",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "strategy": "lora_top", "lora_top": {"blocks": 3}}},
        422,
        "invalid",
        "lora_top.blocks",
        None,
    ),
    (
        "unknown base model",
        "POST",
        "/v1/streams",
        {"json": {"name": "x", "base_model": "/etc/passwd"}},
        422,
        "invalid",
        "base_model",
        None,
    ),
    (
        "hostile stream name",
        "POST",
        "/v1/streams",
        {"json": {"name": "<script>alert(1)</script>"}},
        422,
        "invalid",
        "name",
        None,
    ),
    (
        "malformed JSON body",
        "POST",
        "/v1/streams",
        {"content": b'{"name": ', "headers": {"content-type": "application/json"}},
        422,
        "invalid",
        None,
        None,
    ),
    ("missing stream name", "POST", "/v1/streams", {"json": {}}, 422, "invalid", "name", None),
    ("unknown task", "GET", "/v1/streams/s/tasks/nope", {}, 404, "not_found", "task_id", None),
    ("unknown job", "GET", "/v1/jobs/job_0000000000000000000000", {}, 404, "not_found", "job_id", None),
    ("cancel unknown job", "POST", "/v1/jobs/job_0000000000000000000000/cancel", {}, 404, "not_found", "job_id", None),
    ("malformed job id", "GET", "/v1/jobs/job_nope", {}, 422, "invalid", "job_id", None),
    ("limit out of range", "GET", "/v1/streams?limit=0", {}, 422, "invalid", "limit", None),
    ("unknown job state filter", "GET", "/v1/jobs?state=exploded", {}, 422, "invalid", "state", None),
    ("unknown job order", "GET", "/v1/jobs?order=sideways", {}, 422, "invalid", "order", None),
    (
        "predict before any task",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": ["hi"]}},
        409,
        "not_ready",
        None,
        None,
    ),
    (
        "predict with no inputs",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": []}},
        422,
        "invalid",
        "inputs",
        None,
    ),
    (
        "predict with an unknown task",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": ["hi"], "task": "nope"}},
        404,
        "not_found",
        "task_id",
        None,
    ),
    (
        "predict with temperature 0",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": ["hi"], "temperature": 0}},
        422,
        "invalid",
        "temperature",
        None,
    ),
    (
        "predict with an unknown routing",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": ["hi"], "routing": "magic"}},
        422,
        "invalid",
        "routing",
        None,
    ),
    (
        "predict with too many stop strings",
        "POST",
        "/v1/streams/s/predict",
        {"json": {"inputs": ["hi"], "stop": ["x"] * 9}},
        422,
        "invalid",
        "stop",
        None,
    ),
    (
        "score with no choices",
        "POST",
        "/v1/streams/s/score",
        {"json": {"inputs": ["hi"], "choices": []}},
        422,
        "invalid",
        "choices",
        None,
    ),
    ("tree version out of range", "GET", "/v1/streams/s/tree?version=7", {}, 404, "not_found", "version", None),
    ("unknown route", "GET", "/v1/nothing", {}, 404, "not_found", None, None),
]


def check_error(resp: Any, status: int, code: str, param: str | None, line: int | None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) <= {"code", "message", "param", "line"} and isinstance(err["message"], str) and err["message"]
    assert err["code"] == code
    assert err.get("param") == param
    assert err.get("line") == line


@pytest.mark.parametrize(
    ("label", "method", "path", "kw", "status", "code", "param", "line"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_rejected_and_stores_nothing(
    client: TestClient,
    settings: Settings,
    label: str,
    method: str,
    path: str,
    kw: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
    line: int | None,
) -> None:
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    rows, keys = row_counts(settings.db_url), s3_keys(settings)
    resp = client.request(method, path, **kw)
    check_error(resp, status, code, param, line)
    assert row_counts(settings.db_url) == rows
    assert s3_keys(settings) == keys


def test_duplicate_task_name_is_a_conflict(client: TestClient, settings: Settings) -> None:
    client.post("/v1/streams", json={"name": "s"})
    assert client.post("/v1/streams/s/tasks", **upload(GOOD_FILE)).status_code == 202
    rows, keys = row_counts(settings.db_url), s3_keys(settings)
    other = jsonl([{"prompt": "different", "completion": "data"}] * 12)
    check_error(client.post("/v1/streams/s/tasks", **upload(other)), 409, "conflict", "name", None)
    assert row_counts(settings.db_url) == rows and s3_keys(settings) == keys


def test_duplicate_stream_name_is_a_conflict(client: TestClient, settings: Settings) -> None:
    client.post("/v1/streams", json={"name": "s"})
    rows = row_counts(settings.db_url)
    check_error(client.post("/v1/streams", json={"name": "s"}), 409, "conflict", "name", None)
    assert row_counts(settings.db_url) == rows


def test_cancelling_a_finished_job_is_a_conflict(client: TestClient, settings: Settings) -> None:
    client.post("/v1/streams", json={"name": "s"})
    job = client.post("/v1/streams/s/tasks", **upload(GOOD_FILE)).json()["job"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    rows = row_counts(settings.db_url)
    check_error(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "conflict", None, None)
    assert row_counts(settings.db_url) == rows


def test_oversized_request_is_refused_before_it_is_read(client: TestClient, settings: Settings) -> None:
    client.post("/v1/streams", json={"name": "s"})
    rows, keys = row_counts(settings.db_url), s3_keys(settings)
    big = b"x" * (2 * settings.max_upload_bytes + (1 << 20) + 1)
    resp = client.post("/v1/streams/s/tasks", content=big, headers={"content-type": "multipart/form-data; boundary=b"})
    check_error(resp, 413, "too_large", None, None)
    assert row_counts(settings.db_url) == rows and s3_keys(settings) == keys
