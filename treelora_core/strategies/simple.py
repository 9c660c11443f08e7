"""Baselines: one LoRA through all tasks (`seq_lora`), EWC on it (`ewc`), one LoRA per task
(`per_task_lora`), and O-LoRA (`o_lora`: new LoRA per task, orthogonal to the frozen old ones)."""

from __future__ import annotations

from typing import Any

import torch

from ..models import Encoded
from .base import Path, Strategy, TrainSetup

SHARED = "shared"


class SeqLoRA(Strategy):
    """The same adapter fine-tuned task after task: the forgetting baseline."""

    name = "seq_lora"

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        if SHARED not in self.bank.names():
            self.bank.add(SHARED, seed=self.learner.cfg.train.seed)
        return TrainSetup({SHARED}, self.all_blocks((SHARED,)))

    def path(self, task: str | None) -> Path:
        return self.all_blocks((SHARED,))


class EWC(SeqLoRA):
    """Elastic weight consolidation on the LoRA parameters (diagonal empirical Fisher)."""

    name = "ewc"

    def __init__(self, learner: Any) -> None:
        super().__init__(learner)
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] = []

    def penalty(self, loss: torch.Tensor) -> torch.Tensor:
        if not self.fisher:
            return loss
        params = self.bank.params(SHARED)
        reg = sum(((p - a) ** 2 * f).sum() for p, a, f in zip(params, self.anchor, self.fisher, strict=True))
        return loss + self.learner.cfg.ewc_lambda / 2 * reg

    def end_task(self, name: str, train: list[Encoded]) -> None:
        params = self.bank.params(SHARED)
        fisher = [torch.zeros_like(p) for p in params]
        batches = self.learner.minibatches(train, n=4)
        for ids, labels in batches:
            grads = torch.autograd.grad(self.learner.loss(ids, labels), params)
            for f, g in zip(fisher, grads, strict=True):
                f += g.detach() ** 2 / len(batches)
        # Fisher accumulates over tasks so every earlier task stays protected.
        self.fisher = fisher if not self.fisher else [a + b for a, b in zip(self.fisher, fisher, strict=True)]
        self.anchor = [p.detach().clone() for p in params]

    def to_json(self) -> dict[str, Any]:
        return {"has_fisher": bool(self.fisher)}

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"fisher.{i}": f for i, f in enumerate(self.fisher)}
        out.update({f"anchor.{i}": a for i, a in enumerate(self.anchor)})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        n = sum(k.startswith("fisher.") for k in tensors)
        self.fisher = [tensors[f"fisher.{i}"].to(self.learner.device) for i in range(n)]
        self.anchor = [tensors[f"anchor.{i}"].to(self.learner.device) for i in range(n)]


class PerTaskLoRA(Strategy):
    """An independent adapter per task: the upper bound with the true task id."""

    name = "per_task_lora"
    needs_task_id = True

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        self.bank.add(name, seed=self.learner.cfg.train.seed)
        return TrainSetup({name}, self.all_blocks((name,)))

    def path(self, task: str | None) -> Path:
        if task is None:
            raise ValueError("per_task_lora needs a task id or the router")
        return self.all_blocks((task,))


class OLoRA(Strategy):
    """O-LoRA: a new adapter per task; old A's are frozen and the new A is pushed orthogonal to
    them with lambda1 * sum |A_old A_new^T|; inference sums every adapter (no task id)."""

    name = "o_lora"

    def __init__(self, learner: Any) -> None:
        super().__init__(learner)
        self.order: list[str] = []
        self.current: str | None = None
        self.last_orth = 0.0  # the last orthogonality term, for tests and reports

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        self.bank.add(name, seed=self.learner.cfg.train.seed)
        self.current = name
        return TrainSetup({name}, self.all_blocks((*tuple(self.order), name)))

    def orthogonality(self) -> torch.Tensor:
        assert self.current is not None, "orthogonality is defined while a task trains"
        total = next(iter(self.bank.modules.values())).base.weight.new_zeros(())
        for mod in self.bank.modules.values():
            new = mod.lora_A[self.current]
            for old in self.order:
                total = total + (mod.lora_A[old] @ new.T).abs().sum()  # (r, r)
        return total

    def penalty(self, loss: torch.Tensor) -> torch.Tensor:
        if not self.order:
            return loss
        orth = self.orthogonality()
        self.last_orth = float(orth.detach())
        return loss + self.learner.cfg.olora_lambda * orth

    def end_task(self, name: str, train: list[Encoded]) -> None:
        self.order.append(name)
        self.current = None

    def path(self, task: str | None) -> Path:
        return self.all_blocks(tuple(self.order))

    def to_json(self) -> dict[str, Any]:
        return {"order": self.order}

    def load_json(self, state: dict[str, Any]) -> None:
        self.order = list(state["order"])
