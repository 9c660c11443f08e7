"""OpenAI's wire format over the service's generation: a completions or chat request becomes a
generation request (the prompts, `predict`'s parameters), and its answers become OpenAI's
response, or its chunks when streamed. The routes are `api/routes/openai_compat.py`.

Parameters map onto predict's, with its bounds: `max_tokens` (or chat's `max_completion_tokens`)
is `max_new_tokens` (default 16 for completions, as OpenAI's, and `TREELORA_MAX_NEW_TOKENS_LIMIT`
for chat); `temperature` 0 is greedy decoding, above 0 sampling at that temperature (default 1,
as OpenAI's); `top_p`, `seed`, `stop` (a string or a list) as predict's; `n` choices per prompt
need sampling (with a seed, choice k samples with seed + k).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from treelora_core.types import Prompt

from .errors import Invalid, ServiceError, Unsupported, openai_error_body
from .openai_schemas import ChatIn, CompletionIn, GenerationIn
from .schemas import MAX_STOP, MIN_TEMPERATURE
from .settings import Settings
from .streaming import End, TokenStream, sse

# OpenAI parameters this service accepts and ignores (they change nothing in the answer)
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key"})
# OpenAI parameters accepted at the values that ask for nothing this service lacks
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
}


@dataclass(frozen=True)
class Call:
    """A checked OpenAI request: the prompts, `Inference.predict`'s keyword arguments, and what
    the response needs."""

    model: str
    chat: bool
    inputs: list[Prompt]
    gen: dict[str, Any]
    n: int
    stream: bool
    include_usage: bool
    names: dict[str, str]  # predict's parameter names -> this request's (for errors)


def _check(body: GenerationIn) -> None:
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name not in NEUTRAL:
            raise Unsupported(f"unrecognized request argument: {name}", param=name)
        if value not in NEUTRAL[name]:
            raise Unsupported(f"{name} is not supported by this service (only {NEUTRAL[name][1]!r})", param=name)
    if body.stream_options is not None and not body.stream:
        raise Invalid("stream_options is only allowed with stream: true", param="stream_options")
    t = body.temperature
    if t is not None and 0 < t < MIN_TEMPERATURE:
        raise Invalid(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}", param="temperature")
    if (body.n or 1) > 1 and t == 0:
        raise Unsupported("n above 1 needs sampling (temperature above 0): greedy choices are all the same", param="n")


def _gen(body: GenerationIn, max_tokens: int) -> dict[str, Any]:
    stop = body.stop or []
    if len(stop) > MAX_STOP:
        raise Invalid(f"at most {MAX_STOP} stop strings", param="stop")
    t = 1.0 if body.temperature is None else body.temperature
    return {
        "max_new_tokens": max_tokens,
        "do_sample": t > 0,
        "temperature": t if t > 0 else 1.0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "stop": tuple(stop),
        "routing": body.routing,
        "min_confidence": body.min_confidence,
        "n": body.n or 1,
    }


def completion_call(body: CompletionIn) -> Call:
    _check(body)
    prompts: list[Prompt] = list(body.prompt)
    if not prompts:
        raise Invalid("prompt must hold at least one prompt", param="prompt")
    gen = _gen(body, 16 if body.max_tokens is None else body.max_tokens)
    return _call(body, chat=False, inputs=prompts, gen=gen, tokens="max_tokens", texts="prompt")


def chat_call(body: ChatIn, settings: Settings) -> Call:
    _check(body)
    messages = tuple(
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    )
    limit = body.max_completion_tokens or body.max_tokens
    gen = _gen(body, settings.max_new_tokens_limit if limit is None else limit)
    tokens = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return _call(body, chat=True, inputs=[messages], gen=gen, tokens=tokens, texts="messages")


def _call(
    body: GenerationIn, *, chat: bool, inputs: list[Prompt], gen: dict[str, Any], tokens: str, texts: str
) -> Call:
    include = body.stream_options is not None and body.stream_options.include_usage
    names = {"max_new_tokens": tokens, "inputs": texts}
    return Call(body.model, chat, inputs, gen, gen["n"], bool(body.stream), include, names)


@contextmanager
def named_for(call: Call) -> Iterator[None]:
    """Errors of predict's checks name this request's parameters (`max_tokens`, not
    `max_new_tokens`)."""
    try:
        yield
    except ServiceError as exc:
        if exc.param in call.names:
            old, exc.param = exc.param, call.names[exc.param]
            exc.message = exc.message.replace(old, exc.param)
        raise


def _route(stream: str, version: int, answer: dict[str, Any]) -> dict[str, Any]:
    keys = ("task", "confidence", "low_confidence", "path")
    return {"stream": stream, "tree_version": version, **{k: answer[k] for k in keys}}


def _usage(call: Call, answers: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(a["prompt_tokens"] for a in answers[:: call.n])  # each prompt once, however many choices
    done = sum(a["tokens"] for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _head(call: Call, version: int, kind: str) -> dict[str, Any]:
    prefix = "chatcmpl" if call.chat else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": f"treelora-v{version}",
    }


def response(call: Call, stream: str, version: int, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole answer: `text_completion` or `chat.completion`, a choice per answer (prompt
    order, `n` per prompt), each with `treelora`: the task that answered and its routing."""
    choices = []
    for k, a in enumerate(answers):
        choice: dict[str, Any] = {"index": k, "logprobs": None, "finish_reason": a["finish_reason"]}
        if call.chat:
            choice["message"] = {"role": "assistant", "content": a["output"]}
        else:
            choice["text"] = a["output"]
        choice["treelora"] = _route(stream, version, a)
        choices.append(choice)
    kind = "chat.completion" if call.chat else "text_completion"
    return {**_head(call, version, kind), "choices": choices, "usage": _usage(call, answers)}


def chunks(call: Call, stream: str, version: int, tokens: TokenStream) -> Iterator[str]:
    """The answer as server-sent events in OpenAI's chunk format: for chat a first chunk with the
    assistant's role per choice; then each choice's text as it is decoded (`delta.content` or
    `text`); its last chunk with `finish_reason` and `treelora`; with `include_usage`, a chunk
    with no choices and the usage; then `data: [DONE]`. An error after the first chunk is a
    chunk `{"error": {...}}` in OpenAI's shape (the client raises it)."""
    head = _head(call, version, "chat.completion.chunk" if call.chat else "text_completion")
    rows = len(call.inputs) * call.n
    if call.chat:
        for k in range(rows):
            role = {"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            yield sse({**head, "choices": [role]})
    answers: dict[int, dict[str, Any]] = {}
    for event in tokens:
        if isinstance(event, End):
            if event.error is not None:
                e = event.error
                yield sse(openai_error_body(e.status, e.code, e.message, param=call.names.get(e.param or "", e.param)))
                return
            break
        choice: dict[str, Any] = {"index": event.index, "logprobs": None, "finish_reason": None}
        if call.chat:
            choice["delta"] = {"content": event.text} if event.text else {}
        else:
            choice["text"] = event.text
        if event.answer is not None:
            answers[event.index] = event.answer
            choice["finish_reason"] = event.answer["finish_reason"]
            choice["treelora"] = _route(stream, version, event.answer)
        yield sse({**head, "choices": [choice]})
    if call.include_usage:
        yield sse({**head, "choices": [], "usage": _usage(call, [answers[k] for k in sorted(answers)])})
    yield sse("[DONE]")
