"""The contract every continual-learning method meets (as in mammoth / Avalanche): begin a task,
observe a batch (its extra loss terms and gradient edits), end a task; plus how to route a task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..models import Encoded

if TYPE_CHECKING:
    from ..learner import ContinualLearner

Path = dict[int, tuple[str, ...]]  # block -> adapters summed at that block


@dataclass
class TrainSetup:
    trainable: set[str]  # adapter names whose parameters train on this task
    path: Path  # adapters active during training
    start_block: int = 0  # blocks before it hold nothing trainable: their output can be cached
    trainable_blocks: range | None = None  # restrict training to these blocks of `trainable`
    info: dict[str, Any] = field(default_factory=dict)  # placement details for reports


class Strategy:
    name = "base"
    needs_task_id = False  # True: each task has its own path, so inference needs an id or a router

    def __init__(self, learner: ContinualLearner) -> None:
        self.learner = learner
        self.bank = learner.bank
        self.n_blocks = learner.bank.n_blocks

    def all_blocks(self, names: tuple[str, ...]) -> Path:
        return {b: names for b in range(self.n_blocks)}

    # -- the three hooks ------------------------------------------------------------------------
    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        raise NotImplementedError

    def penalty(self, loss: torch.Tensor) -> torch.Tensor:
        """Extra loss terms added to the task loss of one batch (default: none)."""
        return loss

    def after_backward(self) -> None:
        """Edit gradients before the optimiser step (sparse updates, default: nothing)."""

    def end_task(self, name: str, train: list[Encoded]) -> None:
        """Bookkeeping once a task has trained (signatures, Fisher, tree commit)."""

    # -- inference ------------------------------------------------------------------------------
    def path(self, task: str | None) -> Path:
        """Adapters for a task (None: the task-agnostic model, for methods that have one)."""
        raise NotImplementedError

    def stored_bytes(self) -> int:
        return sum(self.bank.nbytes(n) for n in self.bank.names())

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {}

    def load_json(self, state: dict[str, Any]) -> None:
        """Restore what `to_json` wrote (adapter tensors are restored by the learner)."""

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors besides adapters that the strategy needs after a reload (signatures, Fisher)."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `extra_tensors` returned."""
