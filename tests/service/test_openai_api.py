"""The OpenAI-compatible routes in process, on the tiny random Llama with real PostgreSQL and S3:
completions and chat, streamed and not, the models list, predict's token stream, and every
malformed, missing, oversized or hostile value answered in OpenAI's error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from worker.runner import run_job

from .conftest import ROWS, make_stream, submit

PROMPT = "Item 3 of the list: what is it?"
ERROR_KEYS = {"message", "type", "param", "code"}


def learn(client: TestClient, settings: Settings, words: tuple[str, ...] = ("mango",)) -> None:
    make_stream(client, epochs=8, patience=0, lr=1e-2)
    for w in words:
        assert run_job(submit(client, w, [{**r, "completion": w} for r in ROWS])["id"], settings) == "done"


def events(text: str) -> list[tuple[str, Any]]:
    """Server-sent events as (event name or "", data parsed as JSON unless it is [DONE])."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def post(client: TestClient, path: str, body: dict[str, Any] | bytes) -> Any:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


def test_completions_chat_streaming_and_models(wclient: TestClient, wsettings: Settings) -> None:
    learn(wclient, wsettings)
    greedy = {"max_tokens": 4, "temperature": 0}

    models = wclient.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["s", "s:mango"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"] for m in models["data"])
    assert wclient.get("/v1/models/s:mango").json()["treelora"]["task"] == "mango"

    # by task, unstreamed: the text predict gives, usage, the route
    want = wclient.post("/v1/streams/s/predict", json={"inputs": [PROMPT], "task": "mango", "max_new_tokens": 4})
    pred = want.json()["predictions"][0]
    out = wclient.post("/v1/completions", json={"model": "s:mango", "prompt": PROMPT, **greedy}).json()
    assert out["object"] == "text_completion" and out["model"] == "s:mango" and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["text"] == pred["output"] and choice["text"].strip() == "mango"
    assert choice["finish_reason"] == pred["finish_reason"] and choice["logprobs"] is None
    assert choice["treelora"] == {
        "stream": "s",
        "tree_version": 1,
        "task": "mango",
        "confidence": None,
        "low_confidence": False,
        "path": pred["path"],
    }
    usage = out["usage"]
    assert usage["prompt_tokens"] == pred["prompt_tokens"] > 0 and usage["completion_tokens"] == pred["tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # streamed: the same text in pieces, then finish_reason and the route, the usage, [DONE]
    body = {"model": "s:mango", "prompt": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    resp = wclient.post("/v1/completions", json={**body, **greedy})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    evs = events(resp.text)
    assert evs[-1] == ("", "[DONE]")
    chunks = [d for _, d in evs[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == choice["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == choice["finish_reason"]
    assert chunks[-2]["choices"][0]["treelora"]["task"] == "mango"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage

    # auto routing, a list of prompts: a choice per prompt, each with its route
    auto = wclient.post("/v1/completions", json={"model": "s", "prompt": [PROMPT, PROMPT], **greedy}).json()
    assert [c["index"] for c in auto["choices"]] == [0, 1]
    assert all(c["treelora"]["task"] == "mango" and c["treelora"]["confidence"] > 0 for c in auto["choices"])

    # stop strings cut the text (never streamed), finish_reason "stop"
    cut = wclient.post("/v1/completions", json={"model": "s:mango", "prompt": PROMPT, "stop": "ng", **greedy}).json()
    assert cut["choices"][0]["text"] == " ma" and cut["choices"][0]["finish_reason"] == "stop"
    body = {"model": "s:mango", "prompt": PROMPT, "stop": ["ng"], "stream": True, **greedy}
    resp = wclient.post("/v1/completions", json=body)
    assert "".join(d["choices"][0]["text"] for _, d in events(resp.text)[:-1]) == " ma"  # "n" was held back
    short = wclient.post("/v1/completions", json={"model": "s:mango", "prompt": PROMPT, "max_tokens": 1}).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 1

    # chat: the chat template; streamed text equals unstreamed text
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]
    chat = wclient.post("/v1/chat/completions", json={"model": "s:mango", "messages": msgs, **greedy}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    resp = wclient.post("/v1/chat/completions", json={"model": "s:mango", "messages": msgs, "stream": True, **greedy})
    chunks = [d for _, d in events(resp.text)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == chat["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == chat["choices"][0]["finish_reason"]

    # n choices with sampling: seeded, repeatable, and different seeds per choice
    sampled = {"model": "s:mango", "prompt": PROMPT, "n": 3, "temperature": 5.0, "seed": 11, "max_tokens": 5}
    a = wclient.post("/v1/completions", json=sampled).json()
    b = wclient.post("/v1/completions", json=sampled).json()
    assert len(a["choices"]) == 3 and [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len({c["text"] for c in a["choices"]}) > 1
    assert a["usage"]["prompt_tokens"] == usage["prompt_tokens"]  # the prompt counts once

    # predict's own stream: token events, a prediction per input, the end
    resp = wclient.post(
        "/v1/streams/s/predict", json={"inputs": [PROMPT], "task": "mango", "max_new_tokens": 4, "stream": True}
    )
    evs = events(resp.text)
    assert [n for n, _ in evs][-2:] == ["prediction", "end"] and evs[-1][1] == {"tree_version": 1}
    assert "".join(d["text"] for n, d in evs if n == "token") == pred["output"]
    assert {k: v for k, v in evs[-2][1].items() if k != "index"} == pred


# (route, body, status, code, param): what every client might send wrong
BAD: list[tuple[str, dict[str, Any] | bytes, int, str, str | None]] = [
    ("/v1/completions", {"prompt": "x"}, 422, "invalid", "model"),
    ("/v1/completions", {"model": 7, "prompt": "x"}, 422, "invalid", "model"),
    ("/v1/completions", {"model": "s" * 201, "prompt": "x"}, 422, "invalid", "model"),
    ("/v1/completions", {"model": "", "prompt": "x"}, 422, "invalid", "model"),
    ("/v1/completions", b'{"model": "s\\ud800", "prompt": "x"}', 422, "invalid", "model"),
    ("/v1/completions", {"model": "gpt-4o", "prompt": "x"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"model": "s:nope", "prompt": "x"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"model": "s:x:y", "prompt": "x"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"model": "s\u0000; drop table streams", "prompt": "x"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"model": "s"}, 422, "invalid", "prompt"),
    ("/v1/completions", {"model": "s", "prompt": 5}, 422, "invalid", "prompt"),
    ("/v1/completions", {"model": "s", "prompt": [1, 2, 3]}, 422, "invalid", "prompt.0"),
    ("/v1/completions", {"model": "s", "prompt": []}, 422, "invalid", "prompt"),
    ("/v1/completions", {"model": "s", "prompt": "   "}, 422, "invalid", "prompt"),
    ("/v1/completions", b'{"model": "s", "prompt": "a\\ud800b"}', 422, "invalid", "prompt.0"),
    ("/v1/completions", {"model": "s", "prompt": "x" * 20_001}, 422, "invalid", "prompt"),
    ("/v1/completions", {"model": "s", "prompt": ["x"] * 65}, 422, "invalid", "prompt"),
    ("/v1/completions", {"model": "s", "prompt": "x", "max_tokens": 10**30}, 422, "invalid", "max_tokens"),
    ("/v1/completions", {"model": "s", "prompt": "x", "max_tokens": 257}, 422, "invalid", "max_tokens"),
    ("/v1/completions", {"model": "s", "prompt": "x", "max_tokens": 0}, 422, "invalid", "max_tokens"),
    ("/v1/completions", {"model": "s", "prompt": "x", "max_tokens": "many"}, 422, "invalid", "max_tokens"),
    ("/v1/completions", {"model": "s", "prompt": "x", "temperature": -1}, 422, "invalid", "temperature"),
    ("/v1/completions", {"model": "s", "prompt": "x", "temperature": 1e-5}, 422, "invalid", "temperature"),
    ("/v1/completions", b'{"model": "s", "prompt": "x", "temperature": NaN}', 422, "invalid", "temperature"),
    ("/v1/completions", {"model": "s", "prompt": "x", "top_p": 0}, 422, "invalid", "top_p"),
    ("/v1/completions", {"model": "s", "prompt": "x", "seed": -1}, 422, "invalid", "seed"),
    ("/v1/completions", {"model": "s", "prompt": "x", "seed": 2**64}, 422, "invalid", "seed"),
    ("/v1/completions", {"model": "s", "prompt": "x", "stop": [""]}, 422, "invalid", "stop.0"),
    ("/v1/completions", {"model": "s", "prompt": "x", "stop": ["a"] * 9}, 422, "invalid", "stop"),
    ("/v1/completions", {"model": "s", "prompt": "x", "n": 9}, 422, "invalid", "n"),
    ("/v1/completions", {"model": "s", "prompt": "x", "n": 2, "temperature": 0}, 400, "unsupported_parameter", "n"),
    ("/v1/completions", {"model": "s", "prompt": "x", "logprobs": 5}, 400, "unsupported_parameter", "logprobs"),
    ("/v1/completions", {"model": "s", "prompt": "x", "echo": True}, 400, "unsupported_parameter", "echo"),
    ("/v1/completions", {"model": "s", "prompt": "x", "frobnicate": 1}, 400, "unsupported_parameter", "frobnicate"),
    ("/v1/completions", {"model": "s", "prompt": "x", "stream_options": {}}, 422, "invalid", "stream_options"),
    ("/v1/completions", {"model": "s", "prompt": "x", "stream": "yes please"}, 422, "invalid", "stream"),
    ("/v1/completions", b'{"model": "s", "prompt": ', 422, "invalid", None),
    ("/v1/completions", b"[1, 2]", 422, "invalid", None),
    ("/v1/chat/completions", {"model": "s"}, 422, "invalid", "messages"),
    ("/v1/chat/completions", {"model": "s", "messages": []}, 422, "invalid", "messages"),
    ("/v1/chat/completions", {"model": "s", "messages": "hi"}, 422, "invalid", "messages"),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "wizard", "content": "x"}]}, 422, "invalid", None),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "tool", "content": "x"}]}, 422, "invalid", None),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "user"}]}, 422, "invalid", "messages.0.content"),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "user", "content": None}]}, 422, "invalid", None),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "user", "content": ""}]}, 422, "invalid", "messages"),
    (
        "/v1/chat/completions",
        {"model": "s", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        422,
        "invalid",
        None,
    ),
    (
        "/v1/chat/completions",
        b'{"model": "s", "messages": [{"role": "user", "content": "\\udfff"}]}',
        422,
        "invalid",
        None,
    ),
    (
        "/v1/chat/completions",
        {"model": "s", "messages": [{"role": "user", "content": "x"}] * 257},
        422,
        "invalid",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "s", "messages": [{"role": "user", "content": "x" * 20_001}]},
        422,
        "invalid",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {"model": "s", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 300},
        422,
        "invalid",
        "max_completion_tokens",
    ),
    (
        "/v1/chat/completions",
        {"model": "s", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        400,
        "unsupported_parameter",
        "tools",
    ),
    ("/v1/chat/completions", {"model": "s", "messages": [{"role": "user", "content": "hi"}]}, 409, "not_ready", None),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), BAD)
def test_bad_requests_get_openai_errors(
    client: TestClient, path: str, body: dict[str, Any] | bytes, status: int, code: str, param: str | None
) -> None:
    """The stream exists but has learned nothing: every bad body is refused before that (409)."""
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    resp = post(client, path, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == ERROR_KEYS and err["code"] == code and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err


def test_neutral_values_ignored_fields_oversized_bodies_and_unknown_paths(client: TestClient) -> None:
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    neutral = {"logprobs": False, "echo": False, "presence_penalty": 0, "user": "someone", "best_of": 1, "n": 1}
    resp = client.post("/v1/completions", json={"model": "s", "prompt": "x", **neutral})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "not_ready"  # accepted up to the stream
    huge = b'{"model": "s", "prompt": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    resp = post(client, "/v1/completions", huge)
    assert resp.status_code == 413 and set(resp.json()["error"]) == ERROR_KEYS
    assert resp.json()["error"]["code"] == "too_large"
    resp = client.get("/v1/models/s/extra")
    assert resp.status_code == 404 and set(resp.json()["error"]) == ERROR_KEYS
    resp = client.get("/v1/models/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models").json()["data"][0]["id"] == "s"
    # the rest of the API keeps its own shape
    resp = client.post("/v1/streams/nope/predict", json={"inputs": ["x"]})
    assert resp.status_code == 404 and set(resp.json()["error"]) <= {"code", "message", "param", "line"}
    resp = client.post("/v1/streams/s/predict", json={"inputs": ["x"], "stream": "sure"})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "stream"
