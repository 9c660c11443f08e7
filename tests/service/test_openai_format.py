"""OpenAI's wire format without a model: model names, parameters mapped onto predict's, the
response and the server-sent chunks built from a token stream."""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Any

import pytest

from api.errors import Invalid, NotFound, Unsupported
from api.openai_format import Call, chat_call, chunks, completion_call, named_for, response
from api.openai_schemas import ChatIn, CompletionIn
from api.services.catalog import parse_model
from api.settings import Settings
from api.streaming import TokenStream, predict_events, sse

ROUTE = {"task": "t", "confidence": 0.9, "low_confidence": False, "path": [{"lo": 0, "hi": 4, "adapters": ["n1"]}]}


def answer(text: str, finish: str = "stop", tokens: int = 2) -> dict[str, Any]:
    return {**ROUTE, "output": text, "tokens": tokens, "finish_reason": finish, "prompt_tokens": 5}


@pytest.mark.parametrize(
    ("model", "parsed"),
    [
        ("s", ("s", "auto")),
        ("s:auto", ("s", "auto")),
        ("support.v2:billing-1", ("support.v2", "billing-1")),
        (
            "str_0123456789abcdef012345:tsk_0123456789abcdef012345",
            ("str_0123456789abcdef012345", "tsk_0123456789abcdef012345"),
        ),
    ],
)
def test_model_names(model: str, parsed: tuple[str, str]) -> None:
    assert parse_model(model) == parsed


@pytest.mark.parametrize("model", ["", "s:", ":t", "s:t:u", "s t", "-s", "s\n", "s/../t", "x" * 65, "s:" + "t" * 65])
def test_names_that_name_nothing_are_model_not_found(model: str) -> None:
    with pytest.raises(NotFound) as err:
        parse_model(model)
    assert err.value.code == "model_not_found" and err.value.param == "model"


def test_parameters_map_onto_predicts() -> None:
    call = completion_call(CompletionIn(model="s:t", prompt="hi", stop="\n", seed=3))
    assert call.inputs == ["hi"] and call.n == 1 and not call.stream
    assert call.gen == {
        "max_new_tokens": 16,
        "do_sample": True,  # OpenAI's default temperature is 1: sampling
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 3,
        "stop": ("\n",),
        "routing": None,
        "min_confidence": None,
        "n": 1,
    }
    greedy = completion_call(CompletionIn(model="s", prompt=["a", "b"], temperature=0, max_tokens=4))
    assert greedy.gen["do_sample"] is False and greedy.gen["max_new_tokens"] == 4 and greedy.inputs == ["a", "b"]
    body = {"model": "s", "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]}
    chat = chat_call(ChatIn.model_validate({**body, "max_tokens": 5, "max_completion_tokens": 7}), Settings())
    assert chat.inputs == [({"role": "system", "content": "be brief"},)] and chat.gen["max_new_tokens"] == 7
    assert chat_call(ChatIn.model_validate(body), Settings(max_new_tokens_limit=99)).gen["max_new_tokens"] == 99
    with pytest.raises(Unsupported) as err:
        completion_call(CompletionIn.model_validate({"model": "s", "prompt": "x", "logit_bias": {"50256": -100}}))
    assert err.value.param == "logit_bias" and err.value.status == 400


def test_predicts_errors_name_openais_parameters() -> None:
    call = completion_call(CompletionIn(model="s", prompt="x", max_tokens=300))
    with pytest.raises(Invalid) as err, named_for(call):
        raise Invalid("max_new_tokens must be at most 256", param="max_new_tokens")
    assert err.value.param == "max_tokens" and err.value.message == "max_tokens must be at most 256"


def stream_of(*events: tuple[int, str, dict[str, Any] | None], error: Exception | None = None) -> TokenStream:
    tokens = TokenStream()
    future: Future[list[dict[str, Any]]] = Future()
    tokens.follow(future)
    for i, text, done in events:
        tokens.on_text(i, text, done)
    if error is None:
        future.set_result([])
    else:
        future.set_exception(error)
    return tokens


def parse(sse_text: str) -> list[Any]:
    assert all(block.startswith("data: ") for block in sse_text.split("\n\n")[:-1])
    return [b[6:] if b == "data: [DONE]" else json.loads(b[6:]) for b in sse_text.split("\n\n")[:-1]]


def test_chat_chunks_role_pieces_finish_usage_done() -> None:
    call = Call("s", True, [({"role": "user", "content": "hi"},)], {}, 2, True, True, {})
    tokens = stream_of(
        (0, "Hel", None), (1, "Yo", None), (0, "lo", answer("Hello")), (1, "", answer("Yo", "length", 1))
    )
    out = parse("".join(chunks(call, "s", 3, tokens)))
    assert out[-1] == "[DONE]"
    role = [c for c in out[:2]]
    assert [c["choices"][0]["delta"] for c in role] == [{"role": "assistant", "content": ""}] * 2
    assert [c["choices"][0]["index"] for c in role] == [0, 1]
    body = out[2:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["system_fingerprint"] == "treelora-v3" for c in out[:-1])
    assert len({c["id"] for c in out[:-1]}) == 1 and out[0]["id"].startswith("chatcmpl-")
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in body] == [
        (0, {"content": "Hel"}, None),
        (1, {"content": "Yo"}, None),
        (0, {"content": "lo"}, "stop"),
        (1, {}, "length"),
    ]
    assert body[2]["choices"][0]["treelora"] == {"stream": "s", "tree_version": 3, **ROUTE}
    assert out[-2]["choices"] == [] and out[-2]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
    }


def test_completion_chunks_and_an_error_midway() -> None:
    call = Call("s:t", False, ["a"], {}, 1, True, False, {"max_new_tokens": "max_tokens"})
    out = parse("".join(chunks(call, "s", 1, stream_of((0, "x", None), error=Invalid("bad", param="max_new_tokens")))))
    assert out[0]["object"] == "text_completion" and out[0]["choices"][0]["text"] == "x"
    assert out[1] == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid"}
    }
    assert len(out) == 2  # no [DONE] after an error
    crash = parse("".join(chunks(call, "s", 1, stream_of(error=RuntimeError("boom")))))
    assert crash[0]["error"]["code"] == "internal" and crash[0]["error"]["type"] == "server_error"
    assert "boom" not in json.dumps(crash)  # the cause is logged, not sent


def test_whole_responses() -> None:
    call = Call("s", False, ["a", "b"], {}, 1, False, False, {})
    out = response(call, "s", 2, [answer(" x"), answer(" y", "length", 4)])
    assert out["object"] == "text_completion" and out["model"] == "s"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, " x", "stop"),
        (1, " y", "length"),
    ]
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    chat = response(Call("s", True, [()], {}, 2, False, False, {}), "s", 2, [answer("p"), answer("q")])
    assert [c["message"] for c in chat["choices"]] == [{"role": "assistant", "content": c} for c in "pq"]
    assert chat["usage"]["prompt_tokens"] == 5  # one prompt, two choices


def test_predict_events() -> None:
    text = "".join(predict_events(4, stream_of((0, "a", None), (0, "b", answer("ab")))))
    assert text == (
        sse({"index": 0, "text": "a"}, "token")
        + sse({"index": 0, "text": "b"}, "token")
        + sse({"index": 0, **answer("ab")}, "prediction")
        + sse({"tree_version": 4}, "end")
    )
    failed = "".join(predict_events(4, stream_of(error=Invalid("nope", param="inputs"))))
    assert failed == 'event: error\ndata: {"error":{"code":"invalid","message":"nope","param":"inputs"}}\n\n'
