"""One request never fails the others it is batched with, on a real uvicorn process with real
concurrent clients: hostile generation parameters and text are refused (422, one error shape)
before they join a batch, and a request that still fails when its batch runs is run again apart,
so that only it gets the error. Every bound of the predict and score bodies is in the schema and
enforced: oversized or non-finite values are 422 naming the field."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from api.storage import key_for
from worker.runner import run_job

from .conftest import ROWS, make_stream, submit
from .procs import Proc, Service, settings_env

PROMPT = "Item 3 of the list: what is it?"
GOOD_PREDICT = {"inputs": [PROMPT], "task": "apple", "max_new_tokens": 2}
GOOD_SAMPLED = {**GOOD_PREDICT, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 7}
GOOD_SCORE = {"inputs": [PROMPT], "choices": ["apple", "plum"], "task": "apple"}

# (path, body, the field the 422 names): each one made its whole batch raise before the fix
POISON: list[tuple[str, dict[str, Any], str]] = [
    ("s/predict", {**GOOD_PREDICT, "do_sample": True, "seed": 2**64}, "seed"),
    ("s/predict", {**GOOD_PREDICT, "do_sample": True, "temperature": 1e-40}, "temperature"),
    ("s/predict", {**GOOD_PREDICT, "inputs": [PROMPT, "\ud800"]}, "inputs.1"),
    ("s/score", {**GOOD_SCORE, "choices": ["apple", "\ud800"]}, "choices.1"),
    ("s/score", {**GOOD_SCORE, "inputs": ["bad \udfff text"]}, "inputs.0"),
]
GOOD: list[tuple[str, dict[str, Any]]] = [
    ("s/predict", GOOD_PREDICT),
    ("s/predict", GOOD_SAMPLED),
    ("s/score", GOOD_SCORE),
]


def raw(body: dict[str, Any]) -> dict[str, Any]:
    """The body as JSON text with `\\ud800` escapes, which any JSON client may send."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def learn(client: TestClient, settings: Settings, stream: str, word: str) -> None:
    make_stream(client, stream)
    job = submit(client, word, [{**r, "completion": word} for r in ROWS], stream=stream)
    assert run_job(job["id"], settings) == "done"


@pytest.fixture
def api(wclient: TestClient, wsettings: Settings, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    """Stream `s` has learned task `apple`; uvicorn serves it with a batch window wide enough
    that requests sent together share a batch."""
    learn(wclient, wsettings, "s", "apple")
    env = settings_env(wsettings.model_copy(update={"batch_window_ms": 150.0, "batch_max_wait_ms": 600.0}))
    with Service(env, tmp_path, workers=0) as svc:
        assert svc.api is not None
        yield svc.base, svc.api


def batch_counts(base: str) -> tuple[float, float]:
    """(batches, rows) the server has run, from its metrics."""
    found = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("treelora_batches", "treelora_batched_rows"):
            found[name] = float(value)
    return found["treelora_batches"], found["treelora_batched_rows"]


def rounds(base: str, good: list[tuple[str, dict[str, Any]]], odd: list[tuple[str, dict[str, Any]]]) -> Any:
    """One round per odd request: every good client (its own keep-alive connection) and the odd
    client send at the same moment. The good clients' responses (or transport errors), and the
    odd client's."""
    n = len(good) + 1
    start = threading.Barrier(n)
    clients = [httpx.Client(base_url=f"{base}/v1/streams/", timeout=120) for _ in range(n)]

    def client(k: int) -> list[httpx.Response]:
        out = []
        for path, body in odd:
            if k < len(good):
                path, body = good[k]
            start.wait(timeout=120)
            try:
                out.append(clients[k].post(path, **raw(body)))
            except httpx.TransportError as exc:  # a dropped connection counts as a failure
                out.append(exc)
        return out

    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(client, range(n)))
    finally:
        for c in clients:
            c.close()
    return results[:-1], results[-1]


def ok(r: httpx.Response | Exception) -> bool:
    return isinstance(r, httpx.Response) and r.status_code == 200


def summary(r: httpx.Response | Exception) -> str:
    return f"{r.status_code} {r.text[:200]}" if isinstance(r, httpx.Response) else repr(r)


def rows(requests: list[tuple[str, dict[str, Any]]]) -> int:
    """Batch rows: a predict input is one, a score input one per choice."""
    return sum(len(b["inputs"]) * len(b.get("choices", [0])) for _, b in requests)


def test_hostile_requests_get_422_and_the_batch_they_join_succeeds(api: tuple[str, Proc]) -> None:
    base = api[0]
    good = GOOD * 2
    warm = httpx.post(f"{base}/v1/streams/s/predict", json=GOOD_PREDICT, timeout=120)  # loads the model
    assert warm.status_code == 200, warm.text
    before = batch_counts(base)
    good_resps, odd_resps = rounds(base, good, [(p, b) for p, b, _ in POISON])
    failed = [summary(r) for resps in good_resps for r in resps if not ok(r)]
    assert not failed, failed
    for k in (0, 1):  # greedy and seeded answers do not depend on what shares their batch
        assert len({json.dumps(r.json()) for r in good_resps[k]}) == 1
    for r, (_, _, param) in zip(odd_resps, POISON, strict=True):
        assert isinstance(r, httpx.Response) and r.status_code == 422, summary(r)
        assert r.json()["error"]["code"] == "invalid" and r.json()["error"]["param"] == param, r.text
    batches, n_rows = batch_counts(base)
    assert n_rows - before[1] == rows(good) * len(POISON)  # no poison row reached a batch
    assert batches - before[0] < len(good) * len(POISON)  # the good clients shared batches


def test_a_request_that_fails_in_its_batch_fails_alone(
    api: tuple[str, Proc], wclient: TestClient, wsettings: Settings, s3_client: Any
) -> None:
    """A request that passes every check but cannot run (stream `b`'s adapter blobs are gone
    from the object store) gets an error; the requests that arrived with it are answered (step
    batching fails it when it is admitted, before it joins; request-level batching runs the
    batch it shared again apart: `test_serving_api.py`)."""
    base, _ = api
    learn(wclient, wsettings, "b", "plum")
    mine = {a["sha256"] for a in wclient.get("/v1/streams/s/adapters").json()["data"]}
    theirs = {a["sha256"] for a in wclient.get("/v1/streams/b/adapters").json()["data"]}
    assert theirs and not mine & theirs
    for sha in theirs:
        s3_client.delete_object(Bucket=wsettings.s3_bucket, Key=wsettings.s3_prefix + key_for(sha))
    good = GOOD * 2
    before = batch_counts(base)
    good_resps, odd_resps = rounds(base, good, [("b/predict", {**GOOD_PREDICT, "task": "plum"})] * 3)
    failed = [summary(r) for resps in good_resps for r in resps if not ok(r)]
    assert not failed, failed
    for r in odd_resps:
        assert isinstance(r, httpx.Response) and r.status_code >= 500, summary(r)
        assert set(r.json()["error"]) >= {"code", "message"}, r.text
    assert batch_counts(base)[1] - before[1] == rows(good) * 3


def openapi_body(client: TestClient, name: str) -> dict[str, Any]:
    spec = client.get("/openapi.json").json()
    return spec["components"]["schemas"][name]["properties"]  # type: ignore[no-any-return]


def test_every_number_and_size_of_predict_and_score_is_bounded_in_the_schema(
    client: TestClient, settings: Settings
) -> None:
    pred, score = openapi_body(client, "PredictIn"), openapi_body(client, "ScoreIn")

    def bounds(prop: dict[str, Any]) -> dict[str, Any]:
        """A property's bounds, looking through `anyOf` (optional fields)."""
        out = {k: v for k, v in prop.items() if k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
        for alt in prop.get("anyOf", []):
            out |= bounds(alt)
        return out

    assert bounds(pred["max_new_tokens"]) == {"minimum": 1, "maximum": settings.max_new_tokens_limit}
    assert bounds(pred["temperature"]) == {"minimum": 1e-3, "maximum": 10}
    assert bounds(pred["top_p"]) == {"exclusiveMinimum": 0, "maximum": 1}
    assert bounds(pred["seed"]) == {"minimum": 0, "maximum": 2**53 - 1}
    for body in (pred, score):
        assert bounds(body["min_confidence"]) == {"minimum": 0, "maximum": 1}
        assert body["inputs"]["maxItems"] == settings.max_predict_inputs
        assert body["inputs"]["items"]["maxLength"] == settings.max_field_chars
        assert body["task"]["maxLength"] == 64 and body["task"]["pattern"]
    assert score["choices"]["maxItems"] == settings.max_score_choices
    assert score["choices"]["items"]["maxLength"] == settings.max_choice_chars
    assert pred["stop"]["maxItems"] == 8 and pred["stop"]["items"]["maxLength"] == 100


def numbers(text: str) -> bytes:
    """JSON with the non-standard NaN / Infinity literals that Python's parser accepts."""
    return text.encode()


HOSTILE: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("predict", {"max_new_tokens": 10**30}, "max_new_tokens"),
    ("predict", {"max_new_tokens": 0}, "max_new_tokens"),
    ("predict", {"max_new_tokens": 257}, "max_new_tokens"),  # over the settings' limit
    ("predict", {"temperature": 0.0001, "do_sample": True}, "temperature"),
    ("predict", {"temperature": 11}, "temperature"),
    ("predict", numbers('{"inputs": ["x"], "temperature": NaN}'), "temperature"),
    ("predict", numbers('{"inputs": ["x"], "temperature": Infinity}'), "temperature"),
    ("predict", {"top_p": 0}, "top_p"),
    ("predict", numbers('{"inputs": ["x"], "top_p": NaN}'), "top_p"),
    ("predict", {"seed": 2**53}, "seed"),
    ("predict", {"seed": -1}, "seed"),
    ("predict", {"seed": 1.5}, "seed"),
    ("predict", numbers('{"inputs": ["x"], "min_confidence": NaN}'), "min_confidence"),
    ("predict", numbers('{"inputs": ["x"], "min_confidence": -Infinity}'), "min_confidence"),
    ("predict", {"min_confidence": 1.5}, "min_confidence"),
    ("predict", {"stop": ["x" * 101]}, "stop.0"),
    ("predict", {"stop": [""]}, "stop.0"),
    ("predict", {"stop": ["\ud800"]}, "stop.0"),
    ("predict", {"task": "\ud800"}, "task"),
    ("predict", {"task": "a\u0000b"}, "task"),
    ("predict", {"task": "x" * 65}, "task"),
    ("predict", {"inputs": ["x"] * 65}, "inputs"),
    ("predict", {"inputs": ["x" * 20_001]}, "inputs"),
    ("score", {"choices": ["a"] * 33}, "choices"),
    ("score", {"choices": ["a" * 20_000]}, "choices"),
    ("score", {"choices": ["\udc80"]}, "choices.0"),
    ("score", numbers('{"inputs": ["x"], "choices": ["a"], "min_confidence": Infinity}'), "min_confidence"),
    ("score", {"task": "\ud800"}, "task"),
]


@pytest.mark.parametrize(("path", "body", "param"), HOSTILE, ids=[f"{p}-{prm}" for p, _, prm in HOSTILE])
def test_hostile_values_are_422_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any] | bytes, param: str
) -> None:
    """Refused before the stream's state is looked at: `s` has learned nothing (that would be 409)."""
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    if isinstance(body, bytes):
        kw: dict[str, Any] = {"content": body, "headers": {"content-type": "application/json"}}
    else:
        base = {"inputs": [PROMPT]} if path == "predict" else {"inputs": [PROMPT], "choices": ["a", "b"]}
        kw = raw({**base, **body})
    resp = client.post(f"/v1/streams/s/{path}", **kw)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid" and err["param"] == param and err["message"], err
