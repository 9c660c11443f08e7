"""Where the HTTP API meets the engine: batched predictions and scoring (`api.serving`), and a
task's path exported as a PEFT adapter archive. Learners and base models come from `api.learners`,
which the worker shares; the serving side wraps one more copy of each base model, with adapter
slots, per set of target modules.
"""

from __future__ import annotations

import copy
import io
import tarfile
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from treelora_core.export import export_peft
from treelora_core.learner import ContinualLearner
from treelora_core.serving import AdapterPool, GenParams, Server
from treelora_core.types import Prompt

from .errors import Conflict, Gone, Invalid
from .learners import base_model, load_learner
from .models import Stream, TreeVersion
from .serving import Batcher, Request, ServedCache, check_choices, check_inputs
from .settings import Routing, Settings
from .step_batcher import StepBatcher
from .storage import BlobStore
from .streaming import TokenStream


class Inference:
    def __init__(self, settings: Settings, store: BlobStore) -> None:
        self.settings, self.store = settings, store
        self.servers: dict[tuple[str, tuple[str, ...]], Server] = {}
        self._servers_lock = threading.Lock()
        self.served = ServedCache(settings, store)
        policy = StepBatcher if settings.batching == "step" else Batcher
        self.batcher = policy(settings, store, self.server)
        self._export_lock = threading.Lock()
        self._learners: OrderedDict[tuple[str, int], ContinualLearner] = OrderedDict()

    def server(self, model: str, targets: tuple[str, ...]) -> Server:
        with self._servers_lock:
            key = (model, targets)
            if key not in self.servers:
                base, tok = base_model(self.settings, model)
                pool = AdapterPool(self.settings.adapter_cache_bytes, next(base.parameters()).device)
                self.servers[key] = Server(copy.deepcopy(base), tok, targets, pool)
            return self.servers[key]

    def stats(self) -> dict[str, float]:
        pools = [s.pool for s in self.servers.values()]
        return {
            "adapter_cache_bytes": sum(p.nbytes for p in pools),
            "adapter_cache_hits": sum(p.hits for p in pools),
            "adapter_cache_misses": sum(p.misses for p in pools),
            "adapter_cache_evictions": sum(p.evictions for p in pools),
            "adapter_load_seconds": sum(p.load_seconds for p in pools),  # over the misses: a cold load's cost
            "adapter_load_seconds_max": max((p.load_seconds_max for p in pools), default=0.0),
            "batches": self.batcher.batches,
            "batched_rows": self.batcher.rows,
        }

    def _request(
        self, stream: Stream, task: str, inputs: Sequence[Prompt], retired: frozenset[str] = frozenset(), **kw: Any
    ) -> Request:
        """A request on the stream's latest committed version, as read when it arrived; `retired`:
        the tasks auto routing leaves out. The body is checked first: a bad one is 422 whatever
        the stream's state."""
        check_inputs(self.settings, inputs)
        if stream.tree_version == 0:
            raise Conflict(f"stream {stream.name!r} has learned no task yet", code="not_ready")
        served = self.served.get(stream)
        if not served.fmt.tok.chat_template and any(not isinstance(p, str) for p in inputs):
            raise Invalid(
                f"base model {stream.base_model!r} has no chat template: send prompts instead", param="inputs"
            )
        retired = retired & set(served.paths)
        if task == "auto" and retired and not set(served.paths) - retired:
            raise Gone(f"every task of stream {stream.name!r} is retired: none to route to", code="task_retired")
        return Request(served, inputs, task, retired=retired, **kw)

    def generation(
        self,
        stream: Stream,
        task: str,
        inputs: Sequence[Prompt],
        retired: frozenset[str] = frozenset(),
        *,
        routing: Routing | None = None,
        min_confidence: float | None = None,
        n: int = 1,
        **gen: Any,
    ) -> Request:
        """A checked generation request, not queued yet. `n`: answers per input (each input
        repeated `n` times in a row; with a seed, copy k samples with seed + k, so they differ)."""
        s = self.settings
        if gen["max_new_tokens"] > s.max_new_tokens_limit:
            raise Invalid(f"max_new_tokens must be at most {s.max_new_tokens_limit}", param="max_new_tokens")
        conf = s.route_min_confidence if min_confidence is None else min_confidence
        params: GenParams | list[GenParams] = GenParams(**gen)
        if n > 1:
            inputs = [p for p in inputs for _ in range(n)]
            seed = gen.get("seed")
            params = [GenParams(**{**gen, "seed": None if seed is None else seed + k}) for k in range(n)] * (
                len(inputs) // n
            )
        return self._request(
            stream, task, inputs, retired, params=params, routing=routing or s.routing, min_confidence=conf
        )

    def predict(
        self, stream: Stream, task: str, inputs: Sequence[Prompt], retired: frozenset[str] = frozenset(), **gen: Any
    ) -> dict[str, Any]:
        req = self.generation(stream, task, inputs, retired, **gen)
        return {"tree_version": req.served.version, "predictions": self.batcher.submit(req)}

    def predict_stream(
        self, stream: Stream, task: str, inputs: Sequence[Prompt], retired: frozenset[str] = frozenset(), **gen: Any
    ) -> tuple[int, TokenStream]:
        """As `predict`, answered piece by piece as the batch decodes: (tree version, the pieces).
        The request is checked (and can fail) here, before anything is streamed."""
        req = self.generation(stream, task, inputs, retired, **gen)
        tokens = TokenStream()
        req.on_text = tokens.on_text
        tokens.follow(req.future)
        self.batcher.put(req)
        return req.served.version, tokens

    def score(
        self,
        stream: Stream,
        task: str,
        inputs: list[str],
        choices: list[str],
        min_confidence: float | None = None,
        routing: Routing | None = None,
        retired: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        s = self.settings
        check_choices(s, choices)
        conf = s.route_min_confidence if min_confidence is None else min_confidence
        req = self._request(
            stream, task, inputs, retired, choices=choices, routing=routing or s.routing, min_confidence=conf
        )
        return {"tree_version": req.served.version, "results": self.batcher.submit(req)}

    def adapter_archive(self, stream: Stream, tv: TreeVersion, task: str) -> bytes:
        """The task's path flattened to a PEFT LoRA adapter, as a .tar.gz of its folder."""
        with self._export_lock, tempfile.TemporaryDirectory() as tmp:
            key = (stream.id, tv.version)
            learner = self._learners.pop(key, None) or load_learner(
                settings=self.settings, store=self.store, stream=stream, version=tv
            )
            self._learners[key] = learner  # most recent last
            while len(self._learners) > self.settings.learner_cache:
                self._learners.popitem(last=False)
            name = task if learner.strategy.needs_task_id else None
            export_peft(learner, name, Path(tmp) / "adapter", base_model_name=stream.base_model)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for f in sorted((Path(tmp) / "adapter").iterdir()):
                    tar.add(f, arcname=f"{task}/{f.name}")
            return buf.getvalue()


def widen_threadpool(tokens: int = 256) -> None:
    """Blocking routes wait on the batcher; let many wait at once so they can be batched."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = tokens
