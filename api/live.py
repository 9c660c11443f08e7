"""Live job events for the SSE route, without a database connection per listener.

One poller per API process reads, every `poll_s`, the state and progress of every job somebody
follows and the events after the last one it handed out, in one short session (two queries
however many listeners), and puts them on the listeners' queues. A listener reads its backlog in
its own short session when it connects, then only waits on its queue: it holds no connection and
no thread, so 64 listeners cost what one does. The poller stops when the last listener leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio

from .db import session_factory
from .enums import TERMINAL
from .errors import NotFound
from .models import JobEvent
from .schemas import EventOut
from .services import jobs

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often the poller reads: the latency of a live event
KEEPALIVE_S = 15.0  # a comment line after this long without a message keeps proxies from closing the stream
POLL_LIMIT = 1000  # events per poll at most; the next poll follows at once when it is reached
END = (-1, "")  # queued after a job's last event and progress: the stream ends

Message = tuple[int | None, str]  # (event id, or None for progress; the SSE text)


def sse(event_id: int | None, type_: str, data: object) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {type_}\ndata: {json.dumps(data, default=str)}\n\n"


def _event(ev: JobEvent) -> Message:
    return ev.id, sse(ev.id, ev.type, EventOut.model_validate(ev).model_dump(mode="json"))


def _progress(state: str, progress: dict[str, Any]) -> Message:
    return None, sse(None, "progress", {"state": state, **progress})


class LiveEvents:
    def __init__(self, db_url: str, poll_s: float = POLL_S) -> None:
        self.db_url, self.poll_s = db_url, poll_s
        self._queues: dict[str, set[asyncio.Queue[Message]]] = {}  # job -> its listeners
        self._cursor: dict[str, int] = {}  # job -> the last event id read for it
        self._progress: dict[str, str] = {}  # job -> the last progress text sent
        self._task: asyncio.Task[None] | None = None

    async def follow(self, job_id: str, after: int | None) -> AsyncIterator[str]:
        """The job's events after `after` (with `id:` for Last-Event-ID), a `progress` event
        whenever its state or progress changes, then the end once it reached a final state."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues.setdefault(job_id, set()).add(queue)  # before the backlog: nothing falls between
        self._start()
        try:
            try:
                job, rows, last_id = await anyio.to_thread.run_sync(self._backlog, job_id, after)
            except NotFound:  # deleted since the route looked it up
                return
            last = after or 0
            for ev in rows:
                last = ev.id
                yield _event(ev)[1]
            state, progress = job.state, job.progress
            last_progress = _progress(state, progress)[1]
            yield last_progress
            if state in TERMINAL:
                return
            self._cursor.setdefault(job_id, last_id)
            while True:
                try:
                    event_id, text = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if (event_id, text) == END:
                    return
                if event_id is None:
                    if text != last_progress:
                        last_progress = text
                        yield text
                elif event_id > last:
                    last = event_id
                    yield text
        finally:
            self._leave(job_id, queue)

    def _backlog(self, job_id: str, after: int | None) -> tuple[Any, list[JobEvent], int]:
        with session_factory(self.db_url)() as session:
            return jobs.event_backlog(session=session, job_id=job_id, after=after)

    def _leave(self, job_id: str, queue: asyncio.Queue[Message]) -> None:
        queues = self._queues.get(job_id)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._queues[job_id]
            self._cursor.pop(job_id, None)
            self._progress.pop(job_id, None)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="live-events")

    async def _run(self) -> None:
        while self._queues:  # the last listener gone: stop (the next one starts a new poller)
            more = False
            try:
                more = await self._poll()
            except Exception:  # a database blip: listeners wait, the next poll tries again
                log.exception("live events poll failed")
            if not more:
                await asyncio.sleep(self.poll_s)

    async def _poll(self) -> bool:
        job_ids, cursors = list(self._queues), dict(self._cursor)

        def read() -> tuple[dict[str, tuple[str, dict[str, Any]]], list[Message], list[str], bool]:
            with session_factory(self.db_url)() as session:
                states, rows, more = jobs.live_updates(
                    session=session, job_ids=job_ids, cursors=cursors, limit=POLL_LIMIT
                )
                return states, [_event(ev) for ev in rows], [ev.job_id for ev in rows], more

        states, events, owners, more = await anyio.to_thread.run_sync(read)
        for (event_id, text), job_id in zip(events, owners, strict=True):
            if job_id in self._queues and event_id is not None:
                self._cursor[job_id] = max(self._cursor.get(job_id, 0), event_id)
                for q in self._queues[job_id]:
                    q.put_nowait((event_id, text))
        if more:  # some jobs' events are still unread: their progress and end wait for the next poll
            return True
        for job_id in set(job_ids) - set(states):  # deleted while followed
            for q in self._queues.get(job_id, ()):
                q.put_nowait(END)
        for job_id, (state, progress) in states.items():
            if job_id not in self._queues:  # its listeners left during the read
                continue
            message = _progress(state, progress)
            if self._progress.get(job_id) != message[1]:
                self._progress[job_id] = message[1]
                for q in self._queues.get(job_id, ()):
                    q.put_nowait(message)
            if state in TERMINAL and job_id in cursors:  # this poll read its events up to the end
                for q in self._queues.get(job_id, ()):
                    q.put_nowait(END)
        return False
