"""Token streaming: a streamed request's text, handed from the batcher's thread to the response
that sends it, and the server-sent events it goes out as.

The batcher calls `TokenStream.on_text` inside its decoding loop (a queue put, nothing more); the
response iterates the stream in a worker thread, one event at a time, until the request's end.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .errors import Internal, ServiceError, error_body


@dataclass(frozen=True)
class Piece:
    """New text of input `index`; `answer`: its whole answer (`predict`'s item), once it ended."""

    index: int
    text: str
    answer: dict[str, Any] | None = None


@dataclass(frozen=True)
class End:
    """The request is over: every input answered, or `error`."""

    error: ServiceError | None = None


class TokenStream:
    def __init__(self) -> None:
        self._events: queue.Queue[Piece | End] = queue.Queue()

    def on_text(self, index: int, text: str, answer: dict[str, Any] | None) -> None:
        """`api.serving.OnText`."""
        if text or answer is not None:
            self._events.put(Piece(index, text, answer))

    def follow(self, future: Future[list[dict[str, Any]]]) -> None:
        """End the stream when the request's future is done (after its last piece)."""

        def done(f: Future[list[dict[str, Any]]]) -> None:
            exc = f.exception()
            if exc is not None and not isinstance(exc, ServiceError):
                exc = Internal("the request failed while it ran; the error has been logged")
            self._events.put(End(exc))  # type: ignore[arg-type]

        future.add_done_callback(done)

    def __iter__(self) -> Iterator[Piece | End]:
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, End):
                return


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: `event: NAME` (when named) and `data: JSON` (a string as it is)."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {body}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def predict_events(version: int, tokens: TokenStream) -> Iterator[str]:
    """`predict` with `stream: true`: `token` events (`index`, `text`) as the inputs decode, a
    `prediction` event per input when it ends (`index` and predict's item for it), then `end`
    (`tree_version`); or an `error` event in the service's error shape, and no `end`."""
    for event in tokens:
        if isinstance(event, End):
            if event.error is not None:
                e = event.error
                yield sse(error_body(e.code, e.message, param=e.param), "error")
                return
            yield sse({"tree_version": version}, "end")
            return
        if event.text:
            yield sse({"index": event.index, "text": event.text}, "token")
        if event.answer is not None:
            yield sse({"index": event.index, **event.answer}, "prediction")
