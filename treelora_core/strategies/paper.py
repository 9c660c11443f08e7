"""`treelora_paper`: the paper's algorithm as the paper states it, for the LLM setting.

One LoRA is trained through all tasks. After each task its true per-layer (per-block) gradient,
averaged over a few minibatches at the task's final weights, is inserted into a layer-wise K-D
tree. While a later task trains, every step runs one LCB pull per layer (kdtree.LCBSearch) to find
the earlier task whose layer gradient is closest (L1) to the current one, then applies Eq. 3:
    w <- w - a * S[grad] - lambda * grad(l_reg),  l_reg = ||g_new - g_k||_1.

Choices where the paper is silent:
- grad(l_reg) needs the Hessian (g_new depends on w). We use the identity-Hessian approximation,
  grad_w l_reg ~ sign(g_new - g_k): one step along it moves g_new towards g_k at no extra
  backward pass. It is rescaled per tensor by the mean |grad| so that lambda is unit-free, and
  it goes through the same optimiser as the task gradient.
- S keeps the top `sparsity` fraction of each tensor's gradient entries by magnitude.
- The internal-node LCB subtracts the node's radius (its spread; see kdtree.py).
Ablations (config `search`): "none" = sparse updates without the penalty, "random" = a random
earlier task per layer instead of the LCB search, "lcb" = the full method.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..kdtree import GradientKDTree, LayerDist, LCBSearch, l1
from ..models import Encoded
from .base import Path, Strategy, TrainSetup
from .simple import SHARED


def _layer_distance(flat: torch.Tensor, layer: int) -> LayerDist:
    return lambda sig: l1(flat, sig[layer])


class TreeLoRAPaper(Strategy):
    name = "treelora_paper"

    def __init__(self, learner: Any) -> None:
        super().__init__(learner)
        self.pc = learner.cfg.paper
        self.kd = GradientKDTree(self.n_blocks)
        self.task_order: list[str] = []
        self.searchers: list[LCBSearch] = []
        self.rng = random.Random(learner.cfg.train.seed)
        self.selected: list[int] = []  # last step's chosen earlier task per layer (for tests/reports)

    def _block_params(self) -> list[list[torch.nn.Parameter]]:
        return [self.bank.params(SHARED, range(b, b + 1)) for b in range(self.n_blocks)]

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        if SHARED not in self.bank.names():
            self.bank.add(SHARED, seed=self.learner.cfg.train.seed)
        self.searchers = [LCBSearch(self.kd, c=self.pc.lcb_c, layer=b) for b in range(self.n_blocks)]
        self._params = self._block_params()
        return TrainSetup({SHARED}, self.all_blocks((SHARED,)))

    def _sparsify(self, g: torch.Tensor) -> torch.Tensor:
        if self.pc.sparsity >= 1.0:
            return g
        k = max(1, int(g.numel() * self.pc.sparsity))
        thr = g.abs().flatten().kthvalue(g.numel() - k + 1).values
        return torch.where(g.abs() >= thr, g, torch.zeros_like(g))

    def after_backward(self) -> None:
        use_penalty = len(self.kd) > 0 and self.pc.search != "none"
        self.selected = []
        for layer, params in enumerate(self._params):
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if use_penalty:
                flat = torch.cat([g.flatten() for g in grads]).cpu()
                if self.pc.search == "random":
                    k = self.rng.randrange(len(self.kd))
                else:
                    k = self.searchers[layer].pull(_layer_distance(flat, layer))
                self.selected.append(k)
                ref = self.kd.signatures[k][layer].float().to(grads[0].device).split([g.numel() for g in grads])
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                new = self._sparsify(g)
                if use_penalty:
                    diff = g - ref[i].view_as(g)
                    new = new + self.pc.reg_lambda * torch.sign(diff) * g.abs().mean()
                p.grad = new

    def end_task(self, name: str, train: list[Encoded]) -> None:
        params = [p for ps in self._params for p in ps]
        for p in params:
            p.requires_grad_(True)
        batches = self.learner.minibatches(train, n=self.pc.signature_batches, seed=len(self.task_order))
        total = [torch.zeros(sum(p.numel() for p in ps)) for ps in self._params]  # on the CPU
        with self.bank.routed_path(self.all_blocks((SHARED,))):
            for ids, labels in batches:
                grads = torch.autograd.grad(self.learner.loss(ids, labels), params)
                it = iter(grads)
                for layer, ps in enumerate(self._params):
                    total[layer] += torch.cat([next(it).flatten() for _ in ps]).cpu() / len(batches)
        for p in params:
            p.requires_grad_(False)
        self.kd.insert([t.half() for t in total])
        self.task_order.append(name)

    def path(self, task: str | None) -> Path:
        return self.all_blocks((SHARED,))

    def to_json(self) -> dict[str, Any]:
        return {"task_order": self.task_order}

    def load_json(self, state: dict[str, Any]) -> None:
        self.task_order = list(state["task_order"])

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"grad.{i}.{layer}": g for i, sig in enumerate(self.kd.signatures) for layer, g in enumerate(sig)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.kd = GradientKDTree(self.n_blocks)
        for i in range(len(self.task_order)):
            self.kd.insert([tensors[f"grad.{i}.{layer}"] for layer in range(self.n_blocks)])
