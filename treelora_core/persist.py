"""Save and load a learner: JSON for structure, safetensors for tensors. Round-trips exactly.

Two layouts: `save`/`load` write one folder; `to_parts`/`from_parts` give a JSON manifest plus
content-addressed blobs (one per adapter, one for the strategy's and router's tensors), so that a
store keeps each unchanged adapter once across versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch as st
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import config_from_dict
from .errors import StateError
from .learner import ContinualLearner
from .router import PrototypeRouter

FORMAT = 1


def _meta(learner: ContinualLearner) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": asdict(learner.cfg),
        "tasks": learner.task_names,
        "metrics": learner.metrics,
        "router": learner.router.names,
        "router_calibration": learner.router.calibration_json(),
        "strategy": learner.strategy.to_json(),
    }


def _extras(learner: ContinualLearner) -> dict[str, torch.Tensor]:
    tensors = {f"strategy/{k}": v for k, v in learner.strategy.extra_tensors().items()}
    tensors.update({f"router/{k}": v for k, v in learner.router.state().items()})
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _restore(learner: ContinualLearner, meta: dict[str, Any], extras: dict[str, torch.Tensor]) -> None:
    learner.bank.set_trainable(set())
    learner.strategy.load_json(meta["strategy"])
    learner.strategy.load_tensors({k[9:]: v for k, v in extras.items() if k.startswith("strategy/")})
    learner.router.load(meta["router"], _router_tensors(extras), meta.get("router_calibration"))
    learner.task_names, learner.metrics = list(meta["tasks"]), dict(meta["metrics"])


def _router_tensors(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[7:]: v for k, v in extras.items() if k.startswith("router/")}


def router_from_parts(
    manifest: dict[str, Any], fetch: Callable[[str], bytes], heldout: bool = False
) -> PrototypeRouter:
    """A version's task router alone, without a model: task names and calibration from the
    manifest, prototypes from the extras blob (what `to_parts` wrote). Its held-out prompts, which
    only a refit needs (when a task is added), are dropped unless `heldout`."""
    tensors = _router_tensors(st.load(fetch(manifest["extras"])))
    if not heldout:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("heldout")}
    router = PrototypeRouter()
    router.load(manifest["router"], tensors, manifest.get("router_calibration"))
    return router


def _check_format(meta: dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise StateError(f"unsupported learner format {meta.get('format')!r}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_parts(learner: ContinualLearner) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, blobs by sha256). The manifest names each adapter's blob and the extras blob;
    equal tensors give equal bytes, so an adapter that did not change keeps its hash."""
    blobs: dict[str, bytes] = {}

    def put(tensors: dict[str, torch.Tensor]) -> str:
        data = st.save({k: v.contiguous() for k, v in tensors.items()})
        key = sha256(data)
        blobs[key] = data
        return key

    manifest = _meta(learner)
    manifest["adapters"] = {n: put(learner.bank.state(n)) for n in sorted(learner.bank.names())}
    manifest["extras"] = put(_extras(learner))
    return manifest, blobs


def from_parts(
    manifest: dict[str, Any], fetch: Callable[[str], bytes], model: PreTrainedModel, tok: PreTrainedTokenizerBase
) -> ContinualLearner:
    """Rebuild a learner from `to_parts` output; `fetch(sha256)` returns a blob's bytes."""
    _check_format(manifest)
    learner = ContinualLearner(model, tok, config_from_dict(manifest["config"]))
    for name, key in manifest["adapters"].items():
        learner.bank.load(name, st.load(fetch(key)))
    _restore(learner, manifest, st.load(fetch(manifest["extras"])))
    return learner


def save(learner: ContinualLearner, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(learner)
    meta["adapters"] = adapters = sorted(learner.bank.names())
    tensors = {
        f"adapter/{n}/{k}": v.detach().cpu().contiguous() for n in adapters for k, v in learner.bank.state(n).items()
    }
    tensors.update(_extras(learner))
    save_file(tensors, str(out / "state.safetensors"))
    (out / "learner.json").write_text(json.dumps(meta, indent=1))
    return out


def load(in_dir: str | Path, model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> ContinualLearner:
    src = Path(in_dir)
    meta = json.loads((src / "learner.json").read_text())
    _check_format(meta)
    learner = ContinualLearner(model, tok, config_from_dict(meta["config"]))
    tensors = load_file(str(src / "state.safetensors"))
    for name in meta["adapters"]:
        prefix = f"adapter/{name}/"
        learner.bank.load(name, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    _restore(learner, meta, tensors)
    return learner


def state_equal(a: ContinualLearner, b: ContinualLearner) -> bool:
    """Same tasks, same adapters bit for bit (used by tests and by the service's checks)."""
    if a.task_names != b.task_names or a.bank.names() != b.bank.names():
        return False
    for n in a.bank.names():
        sa, sb = a.bank.state(n), b.bank.state(n)
        if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True
