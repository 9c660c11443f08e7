"""Batched multi-task serving for the API: committed tree versions made servable, and a batcher
that gathers concurrent requests for a short window and runs them as one batch, whatever tasks
they target (rows are grouped per block inside `treelora_core.serving.Server`).

A request resolves its stream's tree version when it arrives and keeps it: a version committed
meanwhile is seen by the next request, and the adapters a batch uses stay pinned until it ends.
A streamed request (`Request.on_text`) hears its text as each decoding step of its batch finishes;
streamed and unstreamed requests share batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import safetensors.torch as st

from treelora_core.config import config_from_dict
from treelora_core.models import Formatter
from treelora_core.router import PrototypeRouter
from treelora_core.serving import Factors, Generated, GenParams, Server, factors_from_state
from treelora_core.strategies import needs_task_id
from treelora_core.types import Path, Prompt

from .errors import Internal, Invalid, ServiceError
from .learners import base_model, latest_version, load_router
from .models import Stream, TreeVersion
from .settings import Routing, Settings
from .storage import BlobStore

log = logging.getLogger(__name__)


@dataclass
class Served:
    """One committed tree version, ready to serve: task paths in adapter hashes, the router."""

    stream_id: str
    version: int
    base_model: str
    targets: tuple[str, ...]
    fmt: Formatter
    paths: dict[str, Path]  # task -> block -> adapter sha256s
    segments: dict[str, list[dict[str, Any]]]  # task -> path as block ranges of node names
    router: PrototypeRouter
    tree: dict[str, Any]
    scaling: float
    needs_task_id: bool

    def keys(self, tasks: list[str]) -> set[str]:
        return {k for t in tasks for names in self.paths[t].values() for k in names}

    @cached_property
    def all_keys(self) -> set[str]:
        return self.keys(list(self.paths))


Routes = list[list[tuple[str, float | None]]]  # per request, per input: (task, routing confidence)


class Batchable(Protocol):
    @property
    def prompts(self) -> Sequence[object]: ...
    @property
    def choices(self) -> list[str]: ...


Q = TypeVar("Q", bound=Batchable)


def gather(q: queue.Queue[Q], window_ms: float, max_rows: int, max_wait_ms: float = 100.0) -> list[Q]:
    """Block for one request, then keep taking requests while they keep coming: the batch
    closes when `window_ms` pass with no new arrival, when `max_wait_ms` have passed since the
    first, or at `max_rows` rows (a request's inputs, times its choices when scoring). Clients
    that all answer a finished batch at once arrive spread over a few ms; the gap rule keeps
    them together where a fixed window would split them."""
    batch = [q.get()]
    rows = len(batch[0].prompts) * max(1, len(batch[0].choices))
    start = time.monotonic()
    while rows < max_rows:
        wait = min(window_ms / 1000, start + max_wait_ms / 1000 - time.monotonic())
        try:
            req = q.get(timeout=wait) if wait > 0 else q.get_nowait()
        except queue.Empty:
            break
        batch.append(req)
        rows += len(req.prompts) * max(1, len(req.choices))
    return batch


# Hears input i's new text after each decoding step, and its answer (the item `predict` returns
# for it) once it has finished: `on_text(i, text, answer or None)`. It runs on the batcher's
# thread, inside the decoding loop: it must only hand the text on.
OnText = Callable[[int, str, dict[str, Any] | None], None]


@dataclass
class Request:
    served: Served
    prompts: Sequence[Prompt]  # text, or a conversation (rendered with the chat template)
    task: str  # a task name or "auto"
    params: GenParams | Sequence[GenParams] | None = None  # generation (one for all inputs, or one each); None: scoring
    choices: list[str] = field(default_factory=list)
    min_confidence: float | None = None  # None: the router's calibrated threshold
    routing: Routing = "flat"
    future: Future[list[dict[str, Any]]] = field(default_factory=Future)
    retired: frozenset[str] = frozenset()  # tasks auto routing leaves out (never all of them)
    on_text: OnText | None = None  # streamed: see `OnText`
    streamed: bool = False  # some of its text has gone out: it cannot be run again

    def gen(self, i: int) -> GenParams:
        assert self.params is not None
        return self.params if isinstance(self.params, GenParams) else self.params[i]


def routing_text(prompt: Prompt) -> str:
    """What auto routing reads: the text, or a conversation's last user message (the prototypes
    were built from single prompts, not from whole conversations)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


class Batcher:
    def __init__(self, settings: Settings, store: BlobStore, load_server: Any) -> None:
        self.settings, self.store, self.load_server = settings, store, load_server
        self.queue: queue.Queue[Request] = queue.Queue()
        self.batches = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> list[dict[str, Any]]:
        self.queue.put(req)
        return req.future.result()

    def put(self, req: Request) -> None:
        """Queue a request without waiting for it: a streamed one, say (its `on_text` hears it)."""
        self.queue.put(req)

    def _loop(self) -> None:
        while True:
            s = self.settings
            batch = gather(self.queue, s.batch_window_ms, s.max_batch, s.batch_max_wait_ms)
            groups: dict[tuple[str, tuple[str, ...]], list[Request]] = {}
            for r in batch:
                groups.setdefault((r.served.base_model, r.served.targets), []).append(r)
            for (model, targets), reqs in groups.items():
                try:
                    server = self.load_server(model, targets)
                except Exception as exc:  # no model to run on: every request of the group learns why
                    for r in reqs:
                        _fail(r, exc)
                    continue
                self._run_apart(server, reqs)

    def _run_apart(self, server: Server, reqs: list[Request]) -> None:
        """Run the requests as one batch; if the batch raises, run each of them alone, so that
        only a request that fails on its own gets an error and the others their answers (but a
        streamed request whose text had begun to go out gets the batch's error: a second run may
        not repeat that text)."""
        try:
            self._run(server, reqs)
            return
        except Exception as err:
            batch_error = err
            if len(reqs) == 1:
                _fail(reqs[0], err)
                return
            log.warning("a batch of %d requests failed (%r): running them one by one", len(reqs), err)
        for r in reqs:
            if r.streamed:
                _fail(r, batch_error)
            elif not r.future.done():
                try:
                    self._run(server, [r])
                except Exception as exc:
                    _fail(r, exc)

    def _run(self, server: Server, reqs: list[Request]) -> None:
        self.batches += 1
        tasks = self._resolve(server, reqs)
        keys = set().union(*(r.served.keys([t for t, _ in ts]) for r, ts in zip(reqs, tasks, strict=True)))
        scaling = {k: r.served.scaling for r in reqs for k in r.served.all_keys}
        with server.pool.holding(keys, lambda sha: self._factors(sha, scaling[sha])):
            texts = self._generate(server, reqs, tasks)
            logps = self._score(server, reqs, tasks)
        self.rows += len(texts) + len(logps)
        for r, ts in zip(reqs, tasks, strict=True):
            answers: list[dict[str, Any]] = []
            for i, (task, conf) in enumerate(ts):
                if r.params is not None:
                    answers.append(texts[(id(r), i)])
                    continue
                item = _route(r, task, conf)
                scored = {c: logps[(id(r), i, c)] for c in r.choices}
                item["choices"] = [{"choice": c, "logprob": round(v, 4)} for c, v in scored.items()]
                item["best"] = max(scored, key=lambda c: scored[c])
                answers.append(item)
            r.future.set_result(answers)

    def _factors(self, sha: str, scaling: float) -> Factors:
        """An adapter's factors, read from the object store (the pool's loader)."""
        return factors_from_state(st.load(self.store.get(sha)), scaling)

    def _resolve(self, server: Server, reqs: list[Request]) -> Routes:
        """Each input's task and routing confidence: the given task, or the router's pick from
        base-model embeddings (one forward pass for all of the batch's `auto` inputs)."""
        auto = [
            r.served.fmt.encode_prompt(routing_text(p))
            for r in reqs
            if r.task == "auto" and r.served.needs_task_id
            for p in r.prompts
        ]
        emb = server.embed(auto) if auto else None
        out: Routes = []
        k = 0
        for r in reqs:
            router = r.served.router.without(r.retired) if r.retired else r.served.router
            if r.task != "auto" or not r.served.needs_task_id:
                name = r.task if r.task != "auto" else router.names[-1]  # one shared path
                out.append([(name, None)] * len(r.prompts))
                continue
            assert emb is not None
            rows = emb[k : k + len(r.prompts)]
            out.append(list(router.route(rows, r.served.tree["nodes"] if r.routing == "tree" else None)))
            k += len(r.prompts)
        return out

    def _generate(self, server: Server, reqs: list[Request], tasks: Routes) -> dict[tuple[int, int], dict[str, Any]]:
        """Each generating input's answer (`predict`'s item); streamed inputs hear their text as
        the steps finish, and their answer as soon as their own row ends."""
        rows = [
            (r, r.gen(i), i, ts[i])
            for r, ts in zip(reqs, tasks, strict=True)
            if r.params is not None
            for i in range(len(r.prompts))
        ]
        out: dict[tuple[int, int], dict[str, Any]] = {}
        for lo in range(0, len(rows), self.settings.max_batch):
            self._decode(server, rows[lo : lo + self.settings.max_batch], out)
        return out

    def _decode(
        self,
        server: Server,
        chunk: list[tuple[Request, GenParams, int, tuple[str, float | None]]],
        out: dict[tuple[int, int], dict[str, Any]],
    ) -> None:
        ids = [r.served.fmt.encode_prompt(r.prompts[i], min(p.max_new_tokens, 64)) for r, p, i, _ in chunk]
        paths = [r.served.paths[t] for r, _, _, (t, _) in chunk]

        def answer(k: int, g: Generated) -> dict[str, Any]:
            r, _, i, (task, conf) = chunk[k]
            item = _route(r, task, conf)
            item.update(output=g.text, tokens=g.tokens, finish_reason=g.finish_reason, prompt_tokens=len(ids[k]))
            out[(id(r), i)] = item
            return item

        def emit(k: int, text: str, done: Generated | None) -> None:
            r, _, i, _ = chunk[k]
            if r.on_text is not None:
                r.streamed = True
                r.on_text(i, text, None if done is None else answer(k, done))

        streaming = any(r.on_text is not None for r, _, _, _ in chunk)
        params = [p for _, p, _, _ in chunk]
        for k, g in enumerate(server.generate(ids, paths, params, emit if streaming else None)):
            if chunk[k][0].on_text is None:
                answer(k, g)

    def _score(self, server: Server, reqs: list[Request], tasks: Routes) -> dict[tuple[int, int, str], float]:
        rows = [
            (r, i, ts[i][0], c)
            for r, ts in zip(reqs, tasks, strict=True)
            if r.params is None
            for i in range(len(r.prompts))
            for c in r.choices
        ]
        out: dict[tuple[int, int, str], float] = {}
        for lo in range(0, len(rows), self.settings.max_batch):
            chunk = rows[lo : lo + self.settings.max_batch]
            prompts = [r.served.fmt.encode_prompt(r.prompts[i], 16) for r, i, _, _ in chunk]
            comps = [r.served.fmt.completion_ids(c) for r, _, _, c in chunk]
            paths = [r.served.paths[t] for r, _, t, _ in chunk]
            for (r, i, _, c), lp in zip(chunk, server.score(prompts, comps, paths), strict=True):
                out[(id(r), i, c)] = lp
        return out


def _route(r: Request, task: str, conf: float | None) -> dict[str, Any]:
    """The part of an answer that says which task answered and how sure the routing was."""
    threshold = r.served.router.threshold if r.min_confidence is None else r.min_confidence
    return {
        "task": task if r.served.needs_task_id else None,
        "confidence": conf,
        "low_confidence": conf is not None and conf < threshold,
        "path": r.served.segments.get(task, []),
    }


class ServedCache:
    """Committed versions made servable, a few per stream (they are small: no tensors but the
    router's prototypes); adapters themselves live in the servers' pools."""

    def __init__(self, settings: Settings, store: BlobStore, size: int = 64) -> None:
        self.settings, self.store, self.size = settings, store, size
        self._items: OrderedDict[tuple[str, int], Served] = OrderedDict()
        self._building: dict[tuple[str, int], threading.Lock] = {}  # one build per version at a time
        self._lock = threading.Lock()

    def get(self, stream: Stream) -> Served:
        """The stream's version `stream.tree_version`; its row is read only when not cached, and
        once however many requests ask for it at the same time (the others wait for that read:
        a version of 1,000 tasks takes about a second to build, and 32 requests building it each
        at once would hold every one of them for half a minute)."""
        key = (stream.id, stream.tree_version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._items:  # built while this request waited
                    self._items.move_to_end(key)
                    return self._items[key]
            served = self._build(stream, latest_version(settings=self.settings, stream=stream))
            with self._lock:
                self._items[key] = served
                self._building.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return served

    def _build(self, stream: Stream, tv: TreeVersion) -> Served:
        cfg = config_from_dict(stream.config)
        adapters = tv.manifest["adapters"]  # node name -> blob sha256, the pool's key
        paths: dict[str, Path] = {}
        for task, segs in tv.paths.items():
            paths[task] = {
                b: tuple(adapters[n] for n in seg["adapters"]) for seg in segs for b in range(seg["lo"], seg["hi"])
            }
        _, tok = base_model(self.settings, stream.base_model)
        return Served(
            stream_id=stream.id,
            version=tv.version,
            base_model=stream.base_model,
            targets=tuple(sorted(cfg.lora.target_modules)),
            fmt=Formatter(tok, chat_template=cfg.chat_template, max_length=cfg.train.max_length),
            paths=paths,
            segments=dict(tv.paths),
            router=load_router(store=self.store, manifest=tv.manifest),
            tree=tv.tree,
            scaling=cfg.lora.scaling,
            needs_task_id=needs_task_id(cfg.strategy),
        )


def _fail(req: Request, exc: Exception) -> None:
    """The request's error: a service error as it is (a missing blob, say), anything else logged
    here with its traceback and answered as `internal`."""
    if req.future.done():
        return
    if not isinstance(exc, ServiceError):
        log.error("a request failed in its batch", exc_info=exc)
        exc = Internal("the request failed while it ran; the error has been logged")
    req.future.set_exception(exc)


def check_inputs(settings: Settings, inputs: Sequence[Prompt]) -> None:
    """Inputs per request and characters per input (per message of a conversation) within the
    settings; no input without text."""
    if len(inputs) > settings.max_predict_inputs:
        raise Invalid(f"at most {settings.max_predict_inputs} inputs per request", param="inputs")
    for i, prompt in enumerate(inputs):
        texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
        if not any(t.strip() for t in texts):
            raise Invalid(f"inputs[{i}] must be a non-empty string", param="inputs")
        if any(len(t) > settings.max_field_chars for t in texts):
            raise Invalid(f"inputs[{i}] is longer than {settings.max_field_chars} characters", param="inputs")


def check_choices(settings: Settings, choices: list[str]) -> None:
    if len(choices) > settings.max_score_choices:
        raise Invalid(f"at most {settings.max_score_choices} choices per request", param="choices")
    for i, text in enumerate(choices):
        if len(text) > settings.max_choice_chars:
            raise Invalid(f"choices[{i}] is longer than {settings.max_choice_chars} characters", param="choices")
