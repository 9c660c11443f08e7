"""Where the API meets the engine: learners rebuilt from committed tree versions (kept in a small
LRU per stream version), predictions, and a task's path exported as a PEFT adapter archive.

Also the base-model loader the worker shares: one frozen copy per process and model name; each
learner wraps a deep copy with its adapters.
"""

from __future__ import annotations

import copy
import io
import tarfile
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treelora_core import persist, views
from treelora_core.config import config_from_dict
from treelora_core.errors import UnknownTaskError
from treelora_core.export import export_peft
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base

from .errors import Conflict, Invalid
from .models import Stream, TreeVersion
from .settings import Settings
from .storage import BlobStore

_BASES: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
_BASES_LOCK = threading.Lock()


def device_for(settings: Settings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def base_model(settings: Settings, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _BASES_LOCK:
        if name not in _BASES:
            _BASES[name] = load_base(settings.model_choices().get(name), device=device_for(settings))
        return _BASES[name]


def load_learner(settings: Settings, store: BlobStore, stream: Stream, version: TreeVersion | None) -> ContinualLearner:
    model, tok = base_model(settings, stream.base_model)
    model = copy.deepcopy(model)
    if version is None:
        return ContinualLearner(model, tok, config_from_dict(stream.config))
    return persist.from_parts(version.manifest, store.get, model, tok)


class Inference:
    """Thread-safe: one lock around the model, since a routed forward pass sets per-module plans."""

    def __init__(self, settings: Settings, store: BlobStore) -> None:
        self.settings, self.store = settings, store
        self._learners: OrderedDict[tuple[str, int], ContinualLearner] = OrderedDict()
        self._lock = threading.Lock()

    def learner(self, stream: Stream, tv: TreeVersion) -> ContinualLearner:
        key = (stream.id, tv.version)
        if key in self._learners:
            self._learners.move_to_end(key)
            return self._learners[key]
        learner = load_learner(self.settings, self.store, stream, tv)
        self._learners[key] = learner
        while len(self._learners) > self.settings.learner_cache:
            self._learners.popitem(last=False)
        return learner

    def predict(
        self, stream: Stream, tv: TreeVersion | None, task: str, inputs: list[str], **gen: Any
    ) -> dict[str, Any]:
        s = self.settings
        if tv is None:
            raise Conflict(f"stream {stream.name!r} has learned no task yet", code="not_ready")
        if len(inputs) > s.max_predict_inputs:
            raise Invalid(f"at most {s.max_predict_inputs} inputs per request", param="inputs")
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text.strip():
                raise Invalid(f"inputs[{i}] must be a non-empty string", param="inputs")
            if len(text) > s.max_field_chars:
                raise Invalid(f"inputs[{i}] is longer than {s.max_field_chars} characters", param="inputs")
        if gen["max_new_tokens"] > s.max_new_tokens_limit:
            raise Invalid(f"max_new_tokens must be at most {s.max_new_tokens_limit}", param="max_new_tokens")
        opts: dict[str, Any] = {"max_new_tokens": gen["max_new_tokens"]}
        if gen.get("do_sample"):
            opts.update(do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"])
        with self._lock:
            learner = self.learner(stream, tv)
            if gen.get("seed") is not None:
                torch.manual_seed(gen["seed"])
            try:
                preds = learner.predict(inputs, task=task, **opts)
            except UnknownTaskError as exc:
                raise Invalid(str(exc), param="task") from None
            out = []
            for p in preds:
                segs = views.path_segments(learner, p.task) if p.task or not learner.strategy.needs_task_id else []
                out.append({"output": p.text, "task": p.task, "confidence": p.confidence, "path": segs})
        return {"tree_version": tv.version, "predictions": out}

    def adapter_archive(self, stream: Stream, tv: TreeVersion, task: str) -> bytes:
        """The task's path flattened to a PEFT LoRA adapter, as a .tar.gz of its folder."""
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            learner = self.learner(stream, tv)
            name = task if learner.strategy.needs_task_id else None
            export_peft(learner, name, Path(tmp) / "adapter", base_model_name=stream.base_model)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for f in sorted((Path(tmp) / "adapter").iterdir()):
                    tar.add(f, arcname=f"{task}/{f.name}")
            return buf.getvalue()
