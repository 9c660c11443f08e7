"""The contract every continual-learning method meets (as in mammoth / Avalanche): begin a task,
observe a batch (its extra loss terms and gradient edits), end a task; plus how to route a task.

A strategy sees the learner only through `Context`: the adapter bank, the device, the seed, the
task loss and seeded minibatches. Its own knobs are a dataclass beside it (`Options`), stored in
the stream config under the strategy's `section`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from ..lora import LoRABank
from ..models import Encoded
from ..types import Path

Batch = tuple[torch.Tensor, torch.Tensor]  # (ids (B, T), labels (B, T))


class Context(Protocol):
    """What a strategy may use of the learner that runs it."""

    @property
    def bank(self) -> LoRABank: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def seed(self) -> int: ...

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token loss of a batch under the adapters currently routed."""
        ...

    def minibatches(self, enc: list[Encoded], n: int, batch_size: int | None = None, seed: int = 0) -> list[Batch]:
        """`n` seeded minibatches (with wrap-around) of `enc`."""
        ...


@dataclass
class TrainSetup:
    trainable: set[str]  # adapter names whose parameters train on this task
    path: Path  # adapters active during training
    start_block: int = 0  # blocks before it hold nothing trainable: their output can be cached
    cache_prefix: bool = True  # reuse the frozen prefix's hidden states after the first epoch
    # the penalty differentiates the gradient (double backward): the forward must then use an
    # attention kernel that is twice differentiable (the fused CPU kernel is not)
    double_backward: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # placement details for reports


@dataclass
class NoOptions:
    """A method without knobs of its own."""


class Strategy:
    name: ClassVar[str] = "base"
    needs_task_id: ClassVar[bool] = False  # True: a path per task, so inference needs an id or a router
    # True: a learned task's path never changes again (its outputs stay bit-identical, tested), so
    # re-scoring an old task by its id after later tasks gives the same scores
    frozen_paths: ClassVar[bool] = False
    section: ClassVar[str | None] = None  # stream-config field that holds `Options` (None: no knobs)
    Options: ClassVar[type] = NoOptions

    def __init__(self, ctx: Context, options: Any = None) -> None:
        self.ctx = ctx
        self.bank = ctx.bank
        self.n_blocks = ctx.bank.n_blocks
        self.opts = options if options is not None else self.Options()

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
        """Everything the method keeps after training: adapters plus its extra tensors
        (signatures, gradients, Fisher, anchors). The learner adds the router's prototypes."""
        adapters = sum(self.bank.nbytes(n) for n in self.bank.names())
        return adapters + sum(t.numel() * t.element_size() for t in self.extra_tensors().values())

    # -- views ----------------------------------------------------------------------------------
    def tree_nodes(self) -> list[dict[str, Any]] | None:
        """The method's tree as plain nodes (see views.tree_view), or None if it keeps no tree."""
        return None

    def similarities(self, tasks: list[str]) -> dict[str, dict[str, float]]:
        """Task-to-task similarity the method measured (empty if it keeps none)."""
        return {}

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
