"""Probe-gradient signatures: what a task's loss wants from each block, at a probe point that
every task shares (a seeded shared A, B = 0, so the model is the base model and the gradient
with respect to B is comparable across tasks and independent of the tree)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .models import Encoded

if TYPE_CHECKING:
    from .strategies.base import Context

PROBE = "__probe__"


class Prober:
    def __init__(self, ctx: Context, *, seed: int, dim: int, batch_size: int) -> None:
        self.ctx, self.seed, self.dim, self.batch_size = ctx, seed, dim, batch_size
        self._proj: dict[int, torch.Tensor] = {}

    def _projection(self, width: int) -> torch.Tensor:
        if width not in self._proj:  # JL projection: cosines survive, storage shrinks
            g = torch.Generator().manual_seed(self.seed + width)
            self._proj[width] = torch.randn(width, self.dim, generator=g) / self.dim**0.5
        return self._proj[width]

    def pulls(self, train: list[Encoded], n: int, first: int = 0) -> torch.Tensor:
        """`n` minibatch signatures (pull index first..first+n) -> (n, blocks, dim) float32."""
        bank = self.ctx.bank
        bank.add(PROBE, seed=self.seed)  # same seeded A every time: a shared probe point
        try:
            bank.set_trainable({PROBE})
            per_block = [[p for p in bank.params(PROBE, range(b, b + 1))[1::2]] for b in range(bank.n_blocks)]
            out = []
            batches = self.ctx.minibatches(train, first + n, batch_size=self.batch_size, seed=self.seed)[first:]
            with bank.routed_path(bank.everywhere((PROBE,))):
                for ids, labels in batches:
                    grads = torch.autograd.grad(self.ctx.loss(ids, labels), [p for ps in per_block for p in ps])
                    it = iter(grads)
                    rows = []
                    for ps in per_block:
                        vec = torch.cat([next(it).flatten() for _ in ps])
                        rows.append(vec.cpu() @ self._projection(vec.numel()))
                    out.append(torch.stack(rows))
        finally:
            bank.set_trainable(set())
            bank.remove(PROBE)
        return torch.stack(out)


def block_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(blocks, dim) x (blocks, dim) -> (blocks,) cosine per block."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def depth_weights(n_blocks: int, deep_weight: float) -> torch.Tensor:
    """Linear weights from 1 (first block) to deep_weight (last): deep blocks are task-specific."""
    return torch.linspace(1.0, deep_weight, n_blocks)


def similarity(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> float:
    return float((block_cosines(a, b) * weights).sum() / weights.sum())
