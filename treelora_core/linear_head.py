"""A linear routing head: softmax regression from a prompt's embedding to the task it belongs to.

Nearest prototypes score a prompt by its similarity to each task's own prompts, one task at a
time; a prompt whose topic is close to another task's prompts is then routed there. A linear head
is fitted on all tasks' prompts together, so it can weigh the directions that separate the tasks
and ignore those they share. Measured (`python -m benchmarks.routing`, `router_linear`), it gains
little on the long stream (65.5% against 63.7% for the prototypes) and loses on wordnet32 (75.3%
against 78.6%), so the router keeps it off by default. Inputs are standardised with the fitting
rows' mean and spread; the weights
carry an L2 penalty and are fitted by L-BFGS (full batch: the rows are a few dozen per task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RIDGE = 0.1  # L2 penalty on the weights (summed squares), on standardised inputs
MAX_ITER = 200


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C, T)
    bias: torch.Tensor  # (T,)
    mean: torch.Tensor  # (C,) of the fitting rows
    std: torch.Tensor  # (C,)

    @classmethod
    def fit(cls, x: torch.Tensor, labels: torch.Tensor, n_tasks: int, ridge: float = RIDGE) -> LinearHead:
        """Rows x (N, C) with task indices (N,) in [0, n_tasks) -> a fitted head (deterministic:
        zero init, full-batch L-BFGS)."""
        x = x.float()
        mean = x.mean(0)
        std = x.std(0) + 1e-6 if len(x) > 1 else torch.ones(x.shape[1])
        a = (x - mean) / std
        w = torch.zeros(x.shape[1], n_tasks, requires_grad=True)
        b = torch.zeros(n_tasks, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(a @ w + b, labels) + ridge * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return cls(w.detach(), b.detach(), mean, std)

    def scores(self, x: torch.Tensor, columns: list[int] | None = None) -> torch.Tensor:
        """(N, C) -> (N, T) logits (only `columns`, in that order, when given)."""
        out = ((x.float() - self.mean) / self.std) @ self.weight + self.bias
        return out if columns is None else out[:, columns]

    def state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor]) -> LinearHead:
        return cls(t["weight"].float(), t["bias"].float(), t["mean"].float(), t["std"].float())
