"""Where the engine meets persistence: a stream's learner, router and task data loaded from the
database and the object store, and the base models they wrap. The worker (training) and the API
(serving, PEFT export) both load through here.

Nothing here exists for HTTP: no FastAPI, no batcher, no thread pool (import-linter checks it).
One frozen copy of each base model per process; whoever adapts one wraps a copy of it.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from treelora_core import persist
from treelora_core.config import config_from_dict
from treelora_core.data import Task as TaskData
from treelora_core.data import parse_records
from treelora_core.learner import ContinualLearner
from treelora_core.models import base_linear_names, load_base
from treelora_core.router import PrototypeRouter

from .db import session_factory
from .errors import Conflict
from .models import Stream, Task, TreeVersion
from .services.trees import get_version
from .settings import Settings
from .storage import BlobStore

_BASES: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
_BASES_LOCK = threading.Lock()


def device_for(settings: Settings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def use_threads(settings: Settings) -> None:
    """torch's CPU threads for this process, when the settings pin them (`torch_threads`)."""
    if settings.torch_threads is not None and torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def base_model(settings: Settings, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen base model `name` (one of `settings.model_choices()`) and its tokenizer."""
    with _BASES_LOCK:
        if name not in _BASES:
            use_threads(settings)
            _BASES[name] = load_base(settings.model_choices().get(name), device=device_for(settings))
        return _BASES[name]


def linear_names(settings: Settings, name: str) -> frozenset[str]:
    """The Linear layers a stream on base model `name` may adapt (`lora.target_modules`), read
    from the model's config alone (no weights are loaded)."""
    return base_linear_names(settings.model_choices().get(name))


def load_learner(
    *, settings: Settings, store: BlobStore, stream: Stream, version: TreeVersion | None
) -> ContinualLearner:
    """The stream's learner at `version` (None: a fresh one) on its own copy of the base model."""
    model, tok = base_model(settings, stream.base_model)
    model = copy.deepcopy(model)
    if version is None:
        return ContinualLearner(model, tok, config_from_dict(stream.config))
    return persist.from_parts(version.manifest, store.get, model, tok)


def latest_version(*, settings: Settings, stream: Stream) -> TreeVersion:
    """The version `stream.tree_version`, read in a session of its own: the request that asks for
    it has given its connection back before waiting on the model."""
    with session_factory(settings.db_url)() as session:
        tv = get_version(session=session, stream=stream)
    if tv is None:
        raise Conflict(f"stream {stream.name!r} has no version {stream.tree_version}", code="not_ready")
    return tv


def load_router(*, store: BlobStore, manifest: dict[str, Any]) -> PrototypeRouter:
    """A version's task router alone, without a model."""
    return persist.router_from_parts(manifest, store.get)


def load_task(*, store: BlobStore, task: Task) -> TaskData:
    """A task's training and eval splits, as stored when it was submitted."""
    train = parse_records(store.get(task.train_sha256), max_chars=None)
    test = parse_records(store.get(task.eval_sha256), max_chars=None)
    return TaskData(task.name, train, test, task.metric)
