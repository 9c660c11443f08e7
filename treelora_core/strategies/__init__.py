"""Continual-learning methods behind one contract (see base.Strategy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import STRATEGIES
from ..errors import ConfigError
from .base import Strategy
from .simple import EWC, OLoRA, PerTaskLoRA, SeqLoRA

if TYPE_CHECKING:
    from ..learner import ContinualLearner


def _registry() -> dict[str, type[Strategy]]:
    from .paper import TreeLoRAPaper
    from .tree import TreeLoRA

    return {c.name: c for c in (TreeLoRA, TreeLoRAPaper, SeqLoRA, OLoRA, PerTaskLoRA, EWC)}


def check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}", param="strategy")


def make_strategy(name: str, learner: ContinualLearner) -> Strategy:
    check_strategy(name)
    return _registry()[name](learner)


def needs_task_id(name: str) -> bool:
    """Whether the strategy keeps a path per task (so inference needs an id or the router)."""
    check_strategy(name)
    return _registry()[name].needs_task_id
