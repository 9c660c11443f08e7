"""`treelora_paper`: the paper's algorithm as the paper states it, for the LLM setting.

One LoRA is trained through all tasks. After each task its true per-layer (per-block) gradient,
averaged over a few minibatches at the task's final weights, is inserted into a layer-wise K-D
tree. While a later task trains, every step runs one LCB pull per layer (kdtree.LCBSearch) to find
the earlier task whose layer gradient is closest (L1) to the current one, then applies Eq. 3:
    w <- w - a * S[grad] - lambda * grad(l_reg),  l_reg = ||g_new - g_k||_1.

Choices where the paper is silent, and why:
- grad(l_reg) is exact: g_new = dL/dw depends on w, so grad_w l_reg = H sign(g_new - g_k), a
  Hessian-vector product. We get it by double backward: the step's loss becomes
  L + lambda * <g_new, stop_grad(sign(g_new - g_k))> with g_new built with create_graph, whose
  gradient is dL/dw + lambda * H v. (An earlier identity-Hessian shortcut, sign(g - g_k) scaled
  by mean |g|, was not the paper's gradient and, being dense, AdamW turned it into full-size
  steps on every coordinate the sparse operator had just zeroed: more forgetting, not less.)
- The penalty's gradient passes through the same mask as the task gradient: only the coordinates
  S keeps move, so the optimiser cannot turn the penalty into dense updates.
- S keeps the top `sparsity` fraction of each tensor's gradient entries by magnitude.
- The internal-node LCB subtracts the node's radius (its spread; see kdtree.py).
- lambda = 0.5, the paper's value for LLMs.
Ablations (option `search`): "none" = sparse updates without the penalty, "random" = a random
earlier task per layer instead of the LCB search, "lcb" = the full method.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..bounds import bounded, check_bounds
from ..errors import ConfigError
from ..kdtree import GradientKDTree, LayerDist, LCBSearch, l1
from ..models import Encoded
from ..types import Path
from .base import Context, Strategy, TrainSetup
from .seq_lora import SHARED


@dataclass
class PaperConfig:
    """`treelora_paper`: the paper's algorithm (shared LoRA + K-D tree + LCB + sparse updates)."""

    # weight of the L1 gradient-difference penalty (paper: 0.5 for LLMs)
    reg_lambda: float = bounded(0.5, ge=0, le=1000)
    sparsity: float = bounded(0.5, gt=0, le=1)  # fraction of gradient entries kept by the sparse operator S (top-k)
    search: Literal["lcb", "random", "none"] = "lcb"  # "random" and "none" are the paper's ablations
    lcb_c: float = bounded(2.0, ge=0, le=100)  # exploration constant of Eq. 2
    signature_batches: int = bounded(4, ge=1, le=64)  # minibatches averaged into a finished task's gradient signature

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.search not in ("lcb", "random", "none"):
            raise ConfigError("search must be lcb, random or none", param="search")


def _layer_distance(flat: torch.Tensor, layer: int) -> LayerDist:
    return lambda sig: l1(flat, sig[layer])


class TreeLoRAPaper(Strategy):
    name = "treelora_paper"
    section = "paper"
    Options = PaperConfig

    def __init__(self, ctx: Context, options: Any = None) -> None:
        super().__init__(ctx, options)
        self.pc: PaperConfig = self.opts
        self.kd = GradientKDTree(self.n_blocks)
        self.task_order: list[str] = []
        self.searchers: list[LCBSearch] = []
        self.rng = random.Random(ctx.seed)
        self.selected: list[int] = []  # last step's chosen earlier task per layer (for tests/reports)
        self._params: list[list[torch.nn.Parameter]] = []
        self._task_grads: list[torch.Tensor] | None = None  # this step's dL/dw, when the penalty is on
        self.last_penalty_norm = 0.0  # |lambda * masked H v| of the last step (tests, reports)

    def _block_params(self) -> list[list[torch.nn.Parameter]]:
        return [self.bank.params(SHARED, range(b, b + 1)) for b in range(self.n_blocks)]

    def begin_task(self, name: str, train: list[Encoded]) -> TrainSetup:
        if SHARED not in self.bank.names():
            self.bank.add(SHARED, seed=self.ctx.seed)
        self.searchers = [LCBSearch(self.kd, c=self.pc.lcb_c, layer=b) for b in range(self.n_blocks)]
        self._params = self._block_params()
        penalised = len(self.kd) > 0 and self.pc.search != "none" and self.pc.reg_lambda > 0
        return TrainSetup({SHARED}, self.bank.everywhere((SHARED,)), double_backward=penalised)

    def _mask(self, g: torch.Tensor) -> torch.Tensor:
        """The sparse operator S as a 0/1 mask: the top `sparsity` entries of |g|."""
        if self.pc.sparsity >= 1.0:
            return torch.ones_like(g)
        k = max(1, int(g.numel() * self.pc.sparsity))
        thr = g.abs().flatten().kthvalue(g.numel() - k + 1).values
        return (g.abs() >= thr).to(g.dtype)

    def _select(self, layer: int, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The earlier task chosen for this layer (LCB pull or random): its gradient, split like `grads`."""
        if self.pc.search == "random":
            k = self.rng.randrange(len(self.kd))
        else:
            flat = torch.cat([g.detach().flatten() for g in grads]).cpu()
            k = self.searchers[layer].pull(_layer_distance(flat, layer))
        self.selected.append(k)
        ref = self.kd.signatures[k][layer].float().to(grads[0].device)
        return [r.view_as(g) for r, g in zip(ref.split([g.numel() for g in grads]), grads, strict=True)]

    def penalty(self, loss: torch.Tensor) -> torch.Tensor:
        self.selected, self._task_grads = [], None
        if len(self.kd) == 0 or self.pc.search == "none" or self.pc.reg_lambda == 0:
            return loss
        params = [p for ps in self._params for p in ps]
        grads = torch.autograd.grad(loss, params, create_graph=True)  # g_new, differentiable in w
        self._task_grads = [g.detach() for g in grads]
        surrogate = loss.new_zeros(())
        it = iter(grads)
        for layer, ps in enumerate(self._params):
            layer_grads = [next(it) for _ in ps]
            refs = self._select(layer, layer_grads)
            for g, r in zip(layer_grads, refs, strict=True):
                surrogate = surrogate + (g * torch.sign(g.detach() - r)).sum()  # d/dw = H sign(g - g_k)
        return loss + self.pc.reg_lambda * surrogate

    def after_backward(self) -> None:
        task_grads = iter(self._task_grads) if self._task_grads is not None else None
        norm = 0.0
        for params in self._params:
            for p in params:
                total = p.grad if p.grad is not None else torch.zeros_like(p)
                g = next(task_grads) if task_grads is not None else total
                mask = self._mask(g)
                reg = (total - g) * mask  # lambda * H v on the kept coordinates (0 without penalty)
                norm += float(reg.abs().sum())
                p.grad = g * mask + reg
        self.last_penalty_norm = norm

    def end_task(self, name: str, train: list[Encoded]) -> None:
        params = [p for ps in self._params for p in ps]
        for p in params:
            p.requires_grad_(True)
        batches = self.ctx.minibatches(train, n=self.pc.signature_batches, seed=len(self.task_order))
        total = [torch.zeros(sum(p.numel() for p in ps)) for ps in self._params]  # on the CPU
        with self.bank.routed_path(self.bank.everywhere((SHARED,))):
            for ids, labels in batches:
                grads = torch.autograd.grad(self.ctx.loss(ids, labels), params)
                it = iter(grads)
                for layer, ps in enumerate(self._params):
                    total[layer] += torch.cat([next(it).flatten() for _ in ps]).cpu() / len(batches)
        for p in params:
            p.requires_grad_(False)
        self.kd.insert([t.half() for t in total])
        self.task_order.append(name)

    def path(self, task: str | None) -> Path:
        return self.bank.everywhere((SHARED,))

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
