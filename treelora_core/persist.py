"""Save and load a learner: JSON for structure, safetensors for tensors. Round-trips exactly."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import LoraConfig, PaperConfig, StreamConfig, TrainConfig, TreeConfig
from .learner import ContinualLearner

FORMAT = 1


def config_from_dict(d: dict[str, Any]) -> StreamConfig:
    d = dict(d)
    lora = dict(d.pop("lora", {}))
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    return StreamConfig(
        lora=LoraConfig(**lora),
        train=TrainConfig(**d.pop("train", {})),
        tree=TreeConfig(**d.pop("tree", {})),
        paper=PaperConfig(**d.pop("paper", {})),
        **d,
    )


def save(learner: ContinualLearner, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategy = learner.strategy
    adapters = sorted(learner.bank.names())
    meta: dict[str, Any] = {
        "format": FORMAT,
        "config": asdict(learner.cfg),
        "tasks": learner.task_names,
        "metrics": learner.metrics,
        "router": learner.router.names,
        "strategy": strategy.to_json(),
        "adapters": adapters,
    }
    tensors = {
        f"adapter/{n}/{k}": v.detach().cpu().contiguous() for n in adapters for k, v in learner.bank.state(n).items()
    }
    extra = strategy.extra_tensors()
    tensors.update({f"strategy/{k}": v.detach().cpu().contiguous() for k, v in extra.items()})
    tensors.update({f"router/{k}": v.detach().cpu().contiguous() for k, v in learner.router.state().items()})
    save_file(tensors, str(out / "state.safetensors"))
    (out / "learner.json").write_text(json.dumps(meta, indent=1))
    return out


def load(in_dir: str | Path, model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> ContinualLearner:
    src = Path(in_dir)
    meta = json.loads((src / "learner.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"unsupported learner format {meta.get('format')!r}")
    learner = ContinualLearner(model, tok, config_from_dict(meta["config"]))
    tensors = load_file(str(src / "state.safetensors"))
    for name in meta["adapters"]:
        prefix = f"adapter/{name}/"
        learner.bank.load(name, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    learner.bank.set_trainable(set())
    learner.strategy.load_json(meta["strategy"])
    learner.strategy.load_tensors({k[9:]: v for k, v in tensors.items() if k.startswith("strategy/")})
    learner.router.load(meta["router"], {k[7:]: v for k, v in tensors.items() if k.startswith("router/")})
    learner.task_names, learner.metrics = list(meta["tasks"]), dict(meta["metrics"])
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
