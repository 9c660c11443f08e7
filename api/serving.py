"""Batched multi-task serving for the API: committed tree versions made servable, and a batcher
that gathers concurrent requests for a short window and runs them as one batch, whatever tasks
they target (rows are grouped per block inside `treelora_core.serving.Server`).

A request resolves its stream's tree version when it arrives and keeps it: a version committed
meanwhile is seen by the next request, and the adapters a batch uses stay pinned until it ends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import safetensors.torch as st
import torch

from treelora_core.config import config_from_dict
from treelora_core.models import Formatter
from treelora_core.router import PrototypeRouter
from treelora_core.serving import Factors, GenParams, RowPath, Server, factors_from_state
from treelora_core.strategies import needs_task_id

from .errors import Invalid
from .models import Stream, TreeVersion
from .settings import Settings
from .storage import BlobStore


@dataclass
class Served:
    """One committed tree version, ready to serve: task paths in adapter hashes, the router."""

    stream_id: str
    version: int
    base_model: str
    targets: tuple[str, ...]
    fmt: Formatter
    paths: dict[str, RowPath]  # task -> block -> adapter sha256s
    segments: dict[str, list[dict[str, Any]]]  # task -> path as block ranges of node names
    router: PrototypeRouter
    tree: dict[str, Any]
    scaling: float
    needs_task_id: bool

    def keys(self, tasks: list[str]) -> set[str]:
        return {k for t in tasks for names in self.paths[t].values() for k in names}


class Batchable(Protocol):
    prompts: list[str]
    choices: list[str]


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


@dataclass
class Request:
    served: Served
    prompts: list[str]
    task: str  # a task name or "auto"
    params: GenParams | None = None  # generation; None: scoring
    choices: list[str] = field(default_factory=list)
    min_confidence: float = 0.5
    routing: str = "flat"
    future: Future[list[dict[str, Any]]] = field(default_factory=Future)


def route_tree(served: Served, scores: torch.Tensor) -> int:
    """Descend the tree: at each level take the child whose member tasks score best on
    average; -> the index (in the router's order) of the task at the leaf reached."""
    names = served.router.names
    nodes = {n["id"]: n for n in served.tree.get("nodes", [])}
    level = [n["id"] for n in nodes.values() if n["parent"] is None]
    if not level:
        return int(scores.argmax())
    while True:

        def mean_score(node_id: str) -> float:
            members = [names.index(t) for t in nodes[node_id]["members"] if t in names]
            return float(scores[members].mean()) if members else -1.0

        best = max(level, key=mean_score)
        if nodes[best]["task"] is not None or not nodes[best]["children"]:
            task = nodes[best]["task"] or nodes[best]["members"][0]
            return names.index(task)
        level = nodes[best]["children"]


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

    def _loop(self) -> None:
        while True:
            s = self.settings
            batch = gather(self.queue, s.batch_window_ms, s.max_batch, s.batch_max_wait_ms)
            groups: dict[tuple[str, tuple[str, ...]], list[Request]] = {}
            for r in batch:
                groups.setdefault((r.served.base_model, r.served.targets), []).append(r)
            for (model, targets), reqs in groups.items():
                try:
                    self._run(self.load_server(model, targets), reqs)
                except Exception as exc:  # every request of the group learns why
                    for r in reqs:
                        if not r.future.done():
                            r.future.set_exception(exc)

    def _run(self, server: Server, reqs: list[Request]) -> None:
        self.batches += 1
        # 1. resolve tasks: the given one, or the router on base-model embeddings
        tasks: list[list[tuple[str, float | None]]] = []
        auto = [(r, p) for r in reqs if r.task == "auto" and r.served.needs_task_id for p in r.prompts]
        emb = server.embed([r.served.fmt.encode_prompt(p) for r, p in auto]) if auto else None
        k = 0
        for r in reqs:
            if r.task != "auto" or not r.served.needs_task_id:
                name = r.task if r.task != "auto" else r.served.router.names[-1]
                tasks.append([(name, None)] * len(r.prompts))
                continue
            assert emb is not None
            scores = r.served.router.scores(emb[k : k + len(r.prompts)])
            probs = torch.softmax(scores / r.served.router.temperature, dim=1)
            picked: list[tuple[str, float | None]] = []
            for row in range(len(r.prompts)):
                i = route_tree(r.served, scores[row]) if r.routing == "tree" else int(probs[row].argmax())
                picked.append((r.served.router.names[i], float(probs[row, i])))
            tasks.append(picked)
            k += len(r.prompts)
        # 2. rows: one per input (generation) or per input and choice (scoring)
        keys: set[str] = set()
        for r, ts in zip(reqs, tasks, strict=True):
            keys |= r.served.keys([t for t, _ in ts])
        scaling = {k: r.served.scaling for r in reqs for k in r.served.keys(list(r.served.paths))}

        def load(sha: str) -> Factors:
            return factors_from_state(st.load(self.store.get(sha)), scaling[sha])

        with server.pool.holding(keys, load):
            gen_rows = [(r, i) for r in reqs if r.params is not None for i in range(len(r.prompts))]
            score_rows = [(r, i, c) for r in reqs if r.params is None for i in range(len(r.prompts)) for c in r.choices]
            req_index = {id(r): j for j, r in enumerate(reqs)}
            texts: dict[tuple[int, int], tuple[str, int]] = {}
            for lo in range(0, len(gen_rows), self.settings.max_batch):
                chunk = gen_rows[lo : lo + self.settings.max_batch]
                ids, paths, params = [], [], []
                for r, i in chunk:
                    assert r.params is not None
                    ids.append(r.served.fmt.encode_prompt(r.prompts[i], min(r.params.max_new_tokens, 64)))
                    paths.append(r.served.paths[tasks[req_index[id(r)]][i][0]])
                    params.append(r.params)
                for (r, i), out in zip(chunk, server.generate(ids, paths, params), strict=True):
                    texts[(id(r), i)] = out
            logps: dict[tuple[int, int, str], float] = {}
            for lo in range(0, len(score_rows), self.settings.max_batch):
                chunk_s = score_rows[lo : lo + self.settings.max_batch]
                prompts = [r.served.fmt.encode_prompt(r.prompts[i], 16) for r, i, _ in chunk_s]
                comps = [r.served.fmt.completion_ids(c) for r, _, c in chunk_s]
                paths = [r.served.paths[tasks[req_index[id(r)]][i][0]] for r, i, _ in chunk_s]
                for (r, i, c), lp in zip(chunk_s, server.score(prompts, comps, paths), strict=True):
                    logps[(id(r), i, c)] = lp
        self.rows += len(gen_rows) + len(score_rows)
        # 3. answers
        for r, ts in zip(reqs, tasks, strict=True):
            answers: list[dict[str, Any]] = []
            for i, (task, conf) in enumerate(ts):
                item: dict[str, Any] = {
                    "task": task if r.served.needs_task_id else None,
                    "confidence": conf,
                    "low_confidence": conf is not None and conf < r.min_confidence,
                    "path": r.served.segments.get(task, []),
                }
                if r.params is not None:
                    item["output"], item["tokens"] = texts[(id(r), i)]
                else:
                    scored = {c: logps[(id(r), i, c)] for c in r.choices}
                    item["choices"] = [{"choice": c, "logprob": round(v, 4)} for c, v in scored.items()]
                    item["best"] = max(scored, key=lambda c: scored[c])
                answers.append(item)
            r.future.set_result(answers)


class ServedCache:
    """Committed versions made servable, a few per stream (they are small: no tensors but the
    router's prototypes); adapters themselves live in the servers' pools."""

    def __init__(self, settings: Settings, store: BlobStore, tokenizer: Any, size: int = 64) -> None:
        self.settings, self.store, self.tokenizer, self.size = settings, store, tokenizer, size
        self._items: OrderedDict[tuple[str, int], Served] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream: Stream, tv: TreeVersion) -> Served:
        key = (stream.id, tv.version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        served = self._build(stream, tv)
        with self._lock:
            self._items[key] = served
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return served

    def _build(self, stream: Stream, tv: TreeVersion) -> Served:
        cfg = config_from_dict(stream.config)
        manifest = tv.manifest
        extras = st.load(self.store.get(manifest["extras"]))
        router = PrototypeRouter()
        router.load(manifest["router"], {k[7:]: v for k, v in extras.items() if k.startswith("router/")})
        paths: dict[str, RowPath] = {}
        for task, segs in tv.paths.items():
            paths[task] = {
                b: tuple(manifest["adapters"][n] for n in seg["adapters"])
                for seg in segs
                for b in range(seg["lo"], seg["hi"])
            }
        tok = self.tokenizer(stream.base_model)
        return Served(
            stream_id=stream.id,
            version=tv.version,
            base_model=stream.base_model,
            targets=tuple(sorted(cfg.lora.target_modules)),
            fmt=Formatter(tok, chat_template=cfg.chat_template, max_length=cfg.train.max_length),
            paths=paths,
            segments=dict(tv.paths),
            router=router,
            tree=tv.tree,
            scaling=cfg.lora.scaling,
            needs_task_id=needs_task_id(cfg.strategy),
        )


def check_inputs(settings: Settings, inputs: list[str]) -> None:
    if len(inputs) > settings.max_predict_inputs:
        raise Invalid(f"at most {settings.max_predict_inputs} inputs per request", param="inputs")
    for i, text in enumerate(inputs):
        if not text.strip():
            raise Invalid(f"inputs[{i}] must be a non-empty string", param="inputs")
        if len(text) > settings.max_field_chars:
            raise Invalid(f"inputs[{i}] is longer than {settings.max_field_chars} characters", param="inputs")
