"""`o_lora` (O-LoRA): a new LoRA per task; the old ones are frozen and the new A is pushed
orthogonal to them with lambda1 * sum |A_old A_new^T|; inference sums every adapter (no task id).
Each task's A starts from its own seeded init, so the orthogonality term measures what training
did, not a shared starting point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..bounds import bounded, check_bounds
from ..models import Encoded
from ..types import Path
from .base import Context, Strategy, TrainSetup


@dataclass
class OLoRAOptions:
    lam: float = bounded(0.5, ge=0, le=1000)  # orthogonality weight lambda1 (paper of O-LoRA: 0.5)

    def __post_init__(self) -> None:
        check_bounds(self)


class OLoRA(Strategy):
    name = "o_lora"
    section = "o_lora"
    Options = OLoRAOptions

    def __init__(self, ctx: Context, options: Any = None) -> None:
        super().__init__(ctx, options)
        self.order: list[str] = []
        self.current: str | None = None
        self.last_orth = 0.0  # the last orthogonality term, for tests and reports

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        self.bank.add(name, seed=self.ctx.seed * 1009 + len(self.order))
        self.current = name
        return TrainSetup({name}, self.bank.everywhere((*self.order, name)))

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
        return loss + self.opts.lam * orth

    def end_task(self, name: str, train: list[Encoded]) -> None:
        self.order.append(name)
        self.current = None

    def path(self, task: str | None) -> Path:
        return self.bank.everywhere(tuple(self.order))

    def to_json(self) -> dict[str, Any]:
        return {"order": self.order}

    def load_json(self, state: dict[str, Any]) -> None:
        self.order = list(state["order"])
