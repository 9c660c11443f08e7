"""`ewc`: elastic weight consolidation on the single LoRA of `seq_lora` (diagonal empirical Fisher).

The Fisher is the mean of per-example squared gradients (batches of one), as EWC defines it; the
square of a batch-mean gradient is smaller by about the batch size and made the penalty vanish.
Fishers of successive tasks add up, so every earlier task stays protected around the weights it
left. `lam` is chosen per stream on validation loss from a stated grid (see benchmarks/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..bounds import bounded, check_bounds
from ..models import Encoded
from .base import Context
from .seq_lora import SHARED, SeqLoRA


@dataclass
class EWCOptions:
    lam: float = bounded(1000.0, ge=0, le=1e9)  # penalty weight: loss + lam/2 * sum F (w - w*)^2
    fisher_examples: int = bounded(32, ge=1, le=4096)  # training examples whose squared gradients make the Fisher

    def __post_init__(self) -> None:
        check_bounds(self)


class EWC(SeqLoRA):
    name = "ewc"
    section = "ewc"
    Options = EWCOptions

    def __init__(self, ctx: Context, options: Any = None) -> None:
        super().__init__(ctx, options)
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] = []
        self.last_penalty = 0.0  # the last penalty term, for tests and reports

    def penalty(self, loss: torch.Tensor) -> torch.Tensor:
        if not self.fisher:
            return loss
        params = self.bank.params(SHARED)
        reg = sum(((p - a) ** 2 * f).sum() for p, a, f in zip(params, self.anchor, self.fisher, strict=True))
        term = self.opts.lam / 2 * reg
        self.last_penalty = float(term.detach())
        return loss + term

    def end_task(self, name: str, train: list[Encoded]) -> None:
        params = self.bank.params(SHARED)
        fisher = [torch.zeros_like(p) for p in params]
        batches = self.ctx.minibatches(train, n=min(self.opts.fisher_examples, len(train)), batch_size=1, seed=7)
        for ids, labels in batches:
            grads = torch.autograd.grad(self.ctx.loss(ids, labels), params)
            for f, g in zip(fisher, grads, strict=True):
                f += g.detach() ** 2 / len(batches)
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
        self.fisher = [tensors[f"fisher.{i}"].to(self.ctx.device) for i in range(n)]
        self.anchor = [tensors[f"anchor.{i}"].to(self.ctx.device) for i in range(n)]
