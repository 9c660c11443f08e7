"""The official `openai` Python client against a running service: uvicorn and a Celery worker as
processes on PostgreSQL, Redis and S3, SmolLM2-135M-Instruct, one stream that learned two real
WordNet tasks (shared by the tests). Completions and chat, streamed and not, by task and by
routing; a bad model and a bad parameter; streamed text equals unstreamed text when greedy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from treelora_core.data import load_wordnet

from .conftest import task_files
from .procs import Service, production_env, wait_jobs

pytestmark = pytest.mark.slow
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def service(
    pg_server_url: str,
    redis_url: str,
    s3_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OpenAI, list[Any]]]:
    tasks = load_wordnet(n_tasks=2, n_train=16, n_test=6, seed=5)  # small: the stream is only served here
    tmp = tmp_path_factory.mktemp("openai-service")
    env, _ = production_env(
        pg_server_url=pg_server_url, redis_url=redis_url, broker_db=4, s3_env=s3_env, data_dir=tmp, max_eval_examples=4
    )
    with Service(env, tmp) as svc:
        resp = httpx.post(f"{svc.base}/v1/streams", json={"name": "wn", "train": {"epochs": 1, "max_length": 96}})
        assert resp.status_code == 201, resp.text
        jobs = []
        for i, task in enumerate(tasks):
            resp = httpx.post(f"{svc.base}/v1/streams/wn/tasks", files=task_files(task), data={"name": f"wn{i}"})
            assert resp.status_code == 202, resp.text
            jobs.append(resp.json()["job"]["id"])
        done = wait_jobs(svc.base, jobs, svc.procs)
        assert [j["state"] for j in done] == ["succeeded"] * 2, [j.get("error") for j in done]
        yield OpenAI(base_url=f"{svc.base}/v1", api_key="x", timeout=600, max_retries=0), tasks


def streamed_text(stream: Any, chat: bool) -> tuple[str, list[Any]]:
    chunks = list(stream)
    if chat:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_completions_by_task_and_by_routing(service: tuple[OpenAI, list[Any]]) -> None:
    client, tasks = service
    prompt = tasks[1].test[0].prompt
    out = client.completions.create(model="wn:wn1", prompt=prompt, **GREEDY)
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.finish_reason in ("stop", "length") and choice.text.strip()
    route = choice.model_extra["treelora"]  # type: ignore[index]
    assert route["task"] == "wn1" and route["confidence"] is None and route["path"]
    assert out.usage is not None and out.usage.completion_tokens >= 1 and out.usage.prompt_tokens > 10

    stream = client.completions.create(
        model="wn:wn1", prompt=prompt, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    text, chunks = streamed_text(stream, chat=False)
    assert text == choice.text  # streamed equals unstreamed for greedy decoding
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == out.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason

    auto = client.completions.create(model="wn", prompt=[e.prompt for e in tasks[0].test[:2]], **GREEDY)
    assert len(auto.choices) == 2
    for c in auto.choices:
        route = c.model_extra["treelora"]  # type: ignore[index]
        assert route["task"] in ("wn0", "wn1") and 0 < route["confidence"] <= 1

    models = {m.id for m in client.models.list()}
    assert models == {"wn", "wn:wn0", "wn:wn1"}


def test_chat_streamed_and_not_by_task_and_by_routing(service: tuple[OpenAI, list[Any]]) -> None:
    client, tasks = service
    messages: list[Any] = [{"role": "user", "content": tasks[0].test[1].prompt}]
    for model in ("wn:wn0", "wn:auto"):
        out = client.chat.completions.create(model=model, messages=messages, **GREEDY)
        msg = out.choices[0].message
        assert out.object == "chat.completion" and msg.role == "assistant" and msg.content
        assert out.choices[0].model_extra["treelora"]["task"] in ("wn0", "wn1")  # type: ignore[index]
        text, chunks = streamed_text(
            client.chat.completions.create(model=model, messages=messages, stream=True, **GREEDY), chat=True
        )
        assert text == msg.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_a_bad_model_and_a_bad_parameter(service: tuple[OpenAI, list[Any]]) -> None:
    client, _ = service
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="wn:nope", prompt="hello", max_tokens=2)
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    assert missing.value.param == "model" and missing.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.completions.create(model="wn", prompt="hello", max_tokens=2, logprobs=2)
    assert unsupported.value.param == "logprobs" and unsupported.value.code == "unsupported_parameter"
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.chat.completions.create(
            model="wn:wn0", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=-1
        )
    assert bad.value.param == "temperature" and bad.value.code == "invalid"
