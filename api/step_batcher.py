"""The batcher with step-level (continuous) batching, the service's default (`batching = "step"`).

Each server (base model and target modules) has one `StepBatch` decoding up to `max_batch` rows.
Between two decoding steps the loop takes the requests that arrived, routes them (one embedding
pass for their `auto` inputs), pins their adapters, and lets their rows join as slots free; a row
that finishes leaves at once, and its request is answered when its last row has. Scoring requests
run between steps as batches of their own (one forward pass, nothing to schedule).

Faults stay with their request: a request whose routing, adapters or prefill fails alone gets the
error; if a decoding step fails, every request in the batch is run again on its own with
request-level batching (a streamed one whose text had begun to go out gets the error instead).
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from treelora_core.serving import Generated, RowEmit, Server
from treelora_core.step_batch import StepBatch, StepRow

from .serving import Batcher, Request, _fail, _route, gather

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Live:
    """A generation request admitted to a server: its answers so far and its pinned adapters."""

    req: Request
    server: Server
    keys: set[str]
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    left: int = 0  # rows not finished yet


@dataclass(eq=False)
class _Row(StepRow):
    """Input `i` of an admitted request, on `task` (routed with confidence `conf`, or given)."""

    live: _Live | None = None
    i: int = 0
    task: str = ""
    conf: float | None = None

    @property
    def of(self) -> _Live:
        assert self.live is not None
        return self.live


class StepBatcher(Batcher):
    def _loop(self) -> None:
        s = self.settings
        self._batches: dict[int, StepBatch[_Row]] = {}  # by id(server)
        self._pending: dict[int, deque[_Row]] = {}  # rows admitted, waiting for a slot
        waiting: deque[Request] = deque()  # taken from the queue, not admitted yet
        while True:
            busy = waiting or any(len(b) for b in self._batches.values()) or any(self._pending.values())
            waiting += (
                self._drain() if busy else gather(self.queue, s.batch_window_ms, s.max_batch, s.batch_max_wait_ms)
            )
            self._admit(waiting)
            for sid, batch in self._batches.items():
                self._join(batch, self._pending[sid])
                self._step(batch)

    def _drain(self) -> list[Request]:
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    # -- admission: routing and adapters, per request -------------------------------------------

    def _admit(self, waiting: deque[Request]) -> None:
        """Scoring requests run now; generation requests are admitted, oldest first, while their
        server has a free slot for their first row."""
        groups: dict[int, tuple[Server, list[Request]]] = {}
        scoring: dict[int, tuple[Server, list[Request]]] = {}
        for r in list(waiting):
            try:
                server = self.load_server(r.served.base_model, r.served.targets)
            except Exception as exc:
                waiting.remove(r)
                _fail(r, exc)
                continue
            sid = id(server)
            if r.params is None:
                waiting.remove(r)
                scoring.setdefault(sid, (server, []))[1].append(r)
                continue
            batch = self._batches.setdefault(sid, StepBatch[_Row](server))
            pending = self._pending.setdefault(sid, deque())
            taken = groups.get(sid, (server, []))[1]
            if len(batch) + len(pending) + sum(len(t.prompts) for t in taken) >= self.settings.max_batch:
                continue  # no slot soon: it waits, unrouted and holding nothing
            waiting.remove(r)
            groups.setdefault(sid, (server, []))[1].append(r)
        for server, reqs in scoring.values():
            self._run_apart(server, reqs)
        for sid, (server, reqs) in groups.items():
            for live in self._routed(server, reqs):
                self._pending[sid] += self._rows(live)

    def _routed(self, server: Server, reqs: list[Request]) -> list[tuple[_Live, list[tuple[str, float | None]]]]:
        """Route the requests (together, or each alone if that fails) and pin their adapters."""
        try:
            routes = self._resolve(server, reqs)
        except Exception:
            routes = []
            for r in reqs:
                try:
                    routes += self._resolve(server, [r])
                except Exception as exc:
                    _fail(r, exc)
                    routes.append([])
        out = []
        for r, ts in zip(reqs, routes, strict=True):
            if r.future.done():
                continue
            keys = r.served.keys([t for t, _ in ts])
            scaling = r.served.scaling
            try:
                server.pool.acquire(keys, partial(self._factors, scaling=scaling))
            except Exception as exc:
                _fail(r, exc)
                continue
            out.append((_Live(r, server, keys, left=len(ts)), ts))
        return out

    def _rows(self, admitted: tuple[_Live, list[tuple[str, float | None]]]) -> list[_Row]:
        live, ts = admitted
        r = live.req
        rows = []
        for i, (task, conf) in enumerate(ts):
            p = r.gen(i)
            ids = r.served.fmt.encode_prompt(r.prompts[i], min(p.max_new_tokens, 64))
            row = _Row(ids, r.served.paths[task], p, live=live, i=i, task=task, conf=conf)
            if r.on_text is not None:
                row.emit = self._emitter(row)
            rows.append(row)
        return rows

    def _emitter(self, row: _Row) -> RowEmit:
        req = row.of.req

        def emit(text: str, done: Generated | None) -> None:
            req.streamed = True
            assert req.on_text is not None
            req.on_text(row.i, text, None if done is None else self._answer(row, done))

        return emit

    # -- decoding -----------------------------------------------------------------------------------

    def _join(self, batch: StepBatch[_Row], pending: deque[_Row]) -> None:
        """Let pending rows join while slots are free and, with a prefill budget, while their
        prompts fit in it (one row joins at each step whatever its length: none waits forever)."""
        rows: list[_Row] = []
        budget, spent = self.settings.prefill_tokens_per_step, 0
        while pending and len(batch) + len(rows) < self.settings.max_batch:
            if budget and rows and spent + len(pending[0].prompt) > budget:
                break
            row = pending.popleft()
            spent += len(row.prompt)
            if not row.of.req.future.done():
                rows.append(row)
            else:
                self._left(row)
        if not rows:
            return
        self.batches += 1
        self.rows += len(rows)
        try:
            self._finish(batch.join(rows))
            return
        except Exception as err:
            if len(rows) > 1:
                log.warning("a prefill of %d rows failed (%r): joining them one by one", len(rows), err)
            batch_error = err
        for row in rows if len(rows) > 1 else []:
            try:
                self._finish(batch.join([row]))
            except Exception as exc:
                self._abort(row, exc)
        if len(rows) == 1:
            self._abort(rows[0], batch_error)

    def _step(self, batch: StepBatch[_Row]) -> None:
        if not len(batch):
            return
        try:
            self._finish(batch.step())
        except Exception as err:
            rows = batch.drop()
            lives = list({id(r.of): r.of for r in rows}.values())
            log.warning("a decoding step of %d requests failed (%r): running them one by one", len(lives), err)
            for live in lives:
                for q in self._pending.values():  # its rows not started yet go too
                    for row in [x for x in q if x.live is live]:
                        q.remove(row)
                live.left = 0
                live.server.pool.release(live.keys)
                if live.req.streamed:
                    _fail(live.req, err)
                elif not live.req.future.done():
                    try:
                        self._run(live.server, [live.req])
                    except Exception as exc:
                        _fail(live.req, exc)

    def _finish(self, done: list[tuple[_Row, Generated]]) -> None:
        for row, g in done:
            if row.of.req.on_text is None:
                self._answer(row, g)
            self._left(row)

    def _answer(self, row: _Row, g: Generated) -> dict[str, Any]:
        item = _route(row.of.req, row.task, row.conf)
        item.update(output=g.text, tokens=g.tokens, finish_reason=g.finish_reason, prompt_tokens=len(row.prompt))
        row.of.answers[row.i] = item
        return item

    def _left(self, row: _Row) -> None:
        """One row of its request is done (answered, or dropped after the request failed)."""
        live = row.of
        live.left -= 1
        if live.left:
            return
        live.server.pool.release(live.keys)
        if not live.req.future.done():
            live.req.future.set_result([live.answers[i] for i in range(len(live.req.prompts))])

    def _abort(self, row: _Row, exc: Exception) -> None:
        _fail(row.of.req, exc)
        self._left(row)
