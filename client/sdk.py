"""The Python SDK: `Client` talks to a running service over HTTP and returns typed objects.

    from client import Client

    with Client() as tl:                        # TREELORA_URL, else http://127.0.0.1:8000
        tl.streams.create("support", train={"epochs": 2})
        sub = tl.tasks.create("support", "billing.jsonl", eval_file="billing-eval.jsonl")
        job = tl.jobs.wait(sub.job.id, on_event=print)
        tl.streams.predict("support", ["My card was charged twice"], task="auto").predictions[0]

Errors are `client.errors.APIError` subclasses carrying the service's `{"error": {...}}` body.
Reads (GET) are retried on connection errors; a write is retried only when it never reached
the service (the connection was refused).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from .errors import APIConnectionError, APIError, APITimeoutError, from_response
from .types import (
    TERMINAL_STATES,
    Adapter,
    Evaluations,
    Job,
    JobEvent,
    Page,
    PredictResponse,
    ScoreResponse,
    SimilarTasks,
    Stream,
    StreamDeleted,
    Task,
    TaskPath,
    TaskSubmitted,
    Tree,
    TreeVersion,
)

M = TypeVar("M", bound=BaseModel)
FileInput = str | os.PathLike[str] | bytes | IO[bytes]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000  # where `./scripts/serve` listens by default
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)  # a first prediction loads the model
SSE_READ_TIMEOUT = 60.0  # the service sends a keep-alive every 15 s


def default_base_url() -> str:
    """TREELORA_URL; else the address `./scripts/serve` uses (TREELORA_HOST / TREELORA_PORT, by
    default 127.0.0.1:8000)."""
    if url := os.environ.get("TREELORA_URL"):
        return url
    host = os.environ.get("TREELORA_HOST") or DEFAULT_HOST
    if host in ("0.0.0.0", "::"):  # listening on every interface: this machine answers on loopback
        host = DEFAULT_HOST
    return f"http://{host}:{os.environ.get('TREELORA_PORT') or DEFAULT_PORT}"


class Client:
    """A connection to the service. `base_url`: default `default_base_url()`; `api_key`: default
    TREELORA_API_KEY, sent as `Authorization: Bearer ...` when set; `timeout` in seconds (or an
    `httpx.Timeout`); `max_retries`: extra tries after a connection error."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = (base_url or default_base_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("TREELORA_API_KEY") or None
        self.max_retries = max_retries
        headers = {"accept": "application/json", "user-agent": "treelora-client/0.1"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self._http = http_client or httpx.Client(timeout=self.timeout)
        self._headers = headers
        self.streams = Streams(self)
        self.tasks = Tasks(self)
        self.jobs = Jobs(self)

    # -- plumbing --------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _send(self, method: str, path: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        """One request, retried with backoff: a GET on any connection error, a write only when the
        connection was never made. A non-2xx answer raises its `APIError`."""
        headers = {**self._headers, **kw.pop("headers", {})}
        attempt = 0
        while True:
            try:
                req = self._http.build_request(method, self._url(path), headers=headers, **kw)
                resp = self._http.send(req, stream=stream)
            except httpx.TransportError as exc:
                safe = method == "GET" or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if safe and attempt < self.max_retries:
                    attempt += 1
                    time.sleep(_backoff(attempt))
                    continue
                raise _connection_error(exc, self.base_url) from exc
            if resp.is_success:
                return resp
            if stream:
                resp.read()
                resp.close()
            raise from_response(resp)

    def _get(self, path: str, cast: type[M], **params: Any) -> M:
        resp = self._send("GET", path, params={k: v for k, v in params.items() if v is not None})
        return cast.model_validate(resp.json())

    def _post(self, path: str, cast: type[M], **kw: Any) -> M:
        return cast.model_validate(self._send("POST", path, **kw).json())


def _backoff(attempt: int) -> float:
    return float(min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2))


def _connection_error(exc: httpx.TransportError, base_url: str) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {base_url} in time ({type(exc).__name__})", request=_req(exc))
    return APIConnectionError(f"cannot reach the service at {base_url}: {exc or type(exc).__name__}", request=_req(exc))


def _req(exc: httpx.TransportError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:
        return None


def _q(part: str) -> str:
    """A path segment (stream and task names are plain, but ids come from users)."""
    from urllib.parse import quote

    return quote(part, safe="")


def _upload(file: FileInput, default_name: str) -> tuple[str, bytes | IO[bytes]]:
    if isinstance(file, bytes):
        return default_name, file
    if isinstance(file, str | os.PathLike):
        p = Path(file)
        return p.name, p.read_bytes()
    return Path(getattr(file, "name", default_name)).name, file


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Streams(_Resource):
    """Streams, and what a stream learned: its tree, R, the adapters; predictions."""

    def create(
        self,
        name: str,
        *,
        base_model: str | None = None,
        strategy: str | None = None,
        chat_template: bool | None = None,
        **sections: dict[str, Any] | None,
    ) -> Stream:
        """`sections`: the config sections the service reads (`train`, `lora`, `tree`, `paper`,
        `ewc`, `o_lora`, `lora_top`), e.g. `train={"epochs": 2}`."""
        body: dict[str, Any] = {"name": name, "base_model": base_model, "strategy": strategy}
        body |= {"chat_template": chat_template, **sections}
        return self._client._post("/v1/streams", Stream, json={k: v for k, v in body.items() if v is not None})

    def retrieve(self, stream: str) -> Stream:
        """By id or name."""
        return self._client._get(f"/v1/streams/{_q(stream)}", Stream)

    def list(self, *, after: str | None = None, limit: int | None = None) -> Page[Stream]:
        return self._client._get("/v1/streams", Page[Stream], after=after, limit=limit)

    def delete(self, stream: str) -> StreamDeleted:
        """The stream, its tasks, jobs, versions and the blobs no other stream uses (a stream with
        an unfinished job is a `ConflictError`: cancel it first)."""
        resp = self._client._send("DELETE", f"/v1/streams/{_q(stream)}")
        return StreamDeleted.model_validate(resp.json())

    def iter(self, *, limit: int = 100) -> Iterator[Stream]:
        """Every stream, page by page."""
        return _pages(lambda after: self.list(after=after, limit=limit))

    def tree(self, stream: str, *, version: int | None = None) -> Tree:
        return self._client._get(f"/v1/streams/{_q(stream)}/tree", Tree, version=version)

    def tree_versions(self, stream: str) -> builtins.list[TreeVersion]:
        return self._client._get(f"/v1/streams/{_q(stream)}/tree/versions", Page[TreeVersion]).data

    def evaluations(self, stream: str) -> Evaluations:
        return self._client._get(f"/v1/streams/{_q(stream)}/evaluations", Evaluations)

    def adapters(self, stream: str, *, version: int | None = None) -> builtins.list[Adapter]:
        return self._client._get(f"/v1/streams/{_q(stream)}/adapters", Page[Adapter], version=version).data

    def predict(
        self, stream: str, inputs: builtins.list[str] | str, *, task: str = "auto", **options: Any
    ) -> PredictResponse:
        """`task`: a task id or name, or "auto" to route by content. `options`: `max_new_tokens`,
        `do_sample`, `temperature`, `top_p`, `seed`, `stop`, `ignore_eos`, `routing`,
        `min_confidence` (see the API docs)."""
        body = {"inputs": [inputs] if isinstance(inputs, str) else inputs, "task": task, **options}
        return self._client._post(f"/v1/streams/{_q(stream)}/predict", PredictResponse, json=body)

    def score(
        self,
        stream: str,
        inputs: builtins.list[str] | str,
        choices: builtins.list[str],
        *,
        task: str = "auto",
        **options: Any,
    ) -> ScoreResponse:
        """The log-likelihood of each choice for each input, and the best one."""
        body = {"inputs": [inputs] if isinstance(inputs, str) else inputs, "choices": choices, "task": task, **options}
        return self._client._post(f"/v1/streams/{_q(stream)}/score", ScoreResponse, json=body)


class Tasks(_Resource):
    """Tasks of a stream: upload one (which queues its training job), read them, export an adapter."""

    def create(
        self,
        stream: str,
        file: FileInput,
        *,
        name: str | None = None,
        eval_file: FileInput | None = None,
        metric: str | None = None,
    ) -> TaskSubmitted:
        """`file`: JSONL (or a JSON array) of `{"prompt", "completion"}`, as a path, bytes or a
        binary file. `name` defaults to the file's name without its extension. Returns the task
        and its queued job; `jobs.wait(job.id)` follows it."""
        fname, content = _upload(file, "train.jsonl")
        if name is None:
            if isinstance(file, bytes):
                raise ValueError("name is required when file is given as bytes")
            name = fname.split(".")[0]
        files: dict[str, tuple[str, bytes | IO[bytes]]] = {"file": (fname, content)}
        if eval_file is not None:
            files["eval_file"] = _upload(eval_file, "eval.jsonl")
        data = {"name": name} | ({"metric": metric} if metric else {})
        return self._client._post(f"/v1/streams/{_q(stream)}/tasks", TaskSubmitted, files=files, data=data)

    def retrieve(self, stream: str, task: str) -> Task:
        return self._client._get(f"/v1/streams/{_q(stream)}/tasks/{_q(task)}", Task)

    def list(self, stream: str, *, after: str | None = None, limit: int | None = None) -> Page[Task]:
        return self._client._get(f"/v1/streams/{_q(stream)}/tasks", Page[Task], after=after, limit=limit)

    def iter(self, stream: str, *, limit: int = 100) -> Iterator[Task]:
        return _pages(lambda after: self.list(stream, after=after, limit=limit))

    def retire(self, stream: str, task: str) -> Task:
        """Stop serving a learned task (predict by its name is then a `GoneError`; `auto` never
        picks it); it stays in the tree and in R."""
        return self._client._post(f"/v1/streams/{_q(stream)}/tasks/{_q(task)}/retire", Task)

    def unretire(self, stream: str, task: str) -> Task:
        """Serve a retired task again."""
        return self._client._post(f"/v1/streams/{_q(stream)}/tasks/{_q(task)}/unretire", Task)

    def path(self, stream: str, task: str) -> TaskPath:
        """The block ranges of the task's path and the adapters summed on each."""
        return self._client._get(f"/v1/streams/{_q(stream)}/tasks/{_q(task)}/path", TaskPath)

    def similar(self, stream: str, task: str, *, limit: int | None = None) -> SimilarTasks:
        return self._client._get(f"/v1/streams/{_q(stream)}/tasks/{_q(task)}/similar", SimilarTasks, limit=limit)

    def adapter_archive(self, stream: str, task: str) -> tuple[bytes, int | None]:
        """The task's path as one PEFT LoRA adapter: the `.tar.gz` bytes and the tree version."""
        resp = self._client._send("GET", f"/v1/streams/{_q(stream)}/tasks/{_q(task)}/adapter")
        version = resp.headers.get("x-tree-version")
        return resp.content, int(version) if version and version.isdigit() else None

    def export_adapter(self, stream: str, task: str, out_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        """Write the task's PEFT adapter into `out_dir` (created if missing), ready for
        `peft.PeftModel.from_pretrained(base_model, out_dir)`; returns the files written."""
        data, _ = self.adapter_archive(stream, task)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                member.name = Path(member.name).name  # the archive holds one folder: flatten it
                tar.extract(member, out, filter="data")
                written.append(out / member.name)
        return written


class Jobs(_Resource):
    """Training jobs: state and progress, events (live), cancel."""

    def retrieve(self, job_id: str) -> Job:
        return self._client._get(f"/v1/jobs/{_q(job_id)}", Job)

    def list(
        self,
        *,
        stream_id: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Page[Job]:
        """`stream_id`: a stream's id or name; `order`: "asc" (oldest first, the default) or "desc"."""
        return self._client._get(
            "/v1/jobs", Page[Job], stream_id=stream_id, state=state, after=after, limit=limit, order=order
        )

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once, a running one within a heartbeat; a finished job is
        a `ConflictError`."""
        return self._client._post(f"/v1/jobs/{_q(job_id)}/cancel", Job)

    def events(self, job_id: str, *, after: int | None = None, limit: int | None = None) -> Page[JobEvent]:
        """The stored events (no `progress` events: see `stream`)."""
        return self._client._get(f"/v1/jobs/{_q(job_id)}/events", Page[JobEvent], after=after, limit=limit)

    def stream(self, job_id: str, *, after: int | None = None) -> Iterator[JobEvent]:
        """The job's live events (Server-Sent Events) until it reaches a final state: its stored
        events and a `progress` event whenever the progress changes. A broken connection is
        resumed where it stopped (`Last-Event-ID`), up to `max_retries` times in a row."""
        last_id, failures = after, 0
        timeout = httpx.Timeout(self._client.timeout.connect, read=SSE_READ_TIMEOUT)
        while True:
            headers = {"accept": "text/event-stream"}
            if last_id is not None:
                headers["last-event-id"] = str(last_id)
            final = False
            try:
                resp = self._client._send(
                    "GET", f"/v1/jobs/{_q(job_id)}/events", stream=True, headers=headers, timeout=timeout
                )
                try:
                    for ev in _parse_sse(resp.iter_lines(), job_id):
                        failures = 0
                        if ev.id is not None:
                            last_id = ev.id
                        yield ev
                        if ev.type == "progress" and ev.data.get("state") in TERMINAL_STATES:
                            final = True
                finally:
                    resp.close()
                return  # the service ends the stream once the job is finished
            except httpx.TransportError as exc:  # the stream broke (reaching the service is retried in _send)
                if final:
                    return
                failures += 1
                if failures > self._client.max_retries:
                    raise _connection_error(exc, self._client.base_url) from exc
                time.sleep(_backoff(failures))

    def wait(self, job_id: str, *, on_event: Callable[[JobEvent], object] | None = None) -> Job:
        """Follow the job's live events until it finishes (calling `on_event` with each); its
        final state. Does not raise for a failed job: check `job.state` and `job.error`."""
        for ev in self.stream(job_id):
            if on_event is not None:
                on_event(ev)
        return self.retrieve(job_id)


def _parse_sse(lines: Iterator[str], job_id: str) -> Iterator[JobEvent]:
    """Server-Sent Events -> JobEvent: stored events as the service wrote them, `progress` events
    with the state and progress as their data."""
    kind, eid = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = json.loads("\n".join(data))
                if kind == "progress":
                    yield JobEvent(job_id=job_id, type="progress", data=payload)
                else:
                    yield JobEvent.model_validate({"job_id": job_id, "type": kind, **payload, "id": eid})
            kind, data, eid = "message", [], None
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id" and value.isdigit():
                eid = int(value)


def _pages(fetch: Callable[[str | None], Page[Any]]) -> Iterator[Any]:
    after = None
    while True:
        page = fetch(after)
        yield from page.data
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


__all__ = ["APIError", "Client", "default_base_url"]
