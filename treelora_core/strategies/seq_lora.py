"""`seq_lora`: one LoRA fine-tuned task after task, the forgetting baseline."""

from __future__ import annotations

from ..models import Encoded
from ..types import Path
from .base import Strategy, TrainSetup

SHARED = "shared"  # the one adapter of the single-LoRA methods


class SeqLoRA(Strategy):
    name = "seq_lora"

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        if SHARED not in self.bank.names():
            self.bank.add(SHARED, seed=self.ctx.seed)
        return TrainSetup({SHARED}, self.bank.everywhere((SHARED,)))

    def path(self, task: str | None) -> Path:
        return self.bank.everywhere((SHARED,))
