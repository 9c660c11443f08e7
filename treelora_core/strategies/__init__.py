"""Continual-learning methods behind one contract (see base.Strategy), one file per method."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Context, Strategy, TrainSetup
from .ewc import EWC
from .o_lora import OLoRA
from .per_task_lora import LoraTop, PerTaskLoRA
from .seq_lora import SeqLoRA
from .treelora import TreeLoRA
from .treelora_paper import TreeLoRAPaper

REGISTRY: dict[str, type[Strategy]] = {
    c.name: c for c in (TreeLoRA, TreeLoRAPaper, SeqLoRA, OLoRA, PerTaskLoRA, LoraTop, EWC)
}
STRATEGIES = tuple(REGISTRY)

__all__ = ["REGISTRY", "STRATEGIES", "Context", "Strategy", "TrainSetup", "make_strategy", "strategy_class"]


def strategy_class(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}", param="strategy")
    return REGISTRY[name]


def make_strategy(name: str, ctx: Context, options: Any = None) -> Strategy:
    return strategy_class(name)(ctx, options)


def needs_task_id(name: str) -> bool:
    """Whether the strategy keeps a path per task (so inference needs an id or the router)."""
    return strategy_class(name).needs_task_id
