"""Routing without a task id: nearest task prototypes in the frozen model's hidden space.

Each task keeps a few prototypes (k-means centroids of its training prompts' mean-pooled hidden
states, L2-normalised). A request goes to the task of its most similar prototype; the confidence
is a softmax over per-task best similarities at a fixed temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import StateError


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Spherical k-means on rows of x (N, C) -> (k, C) unit centroids."""
    k = min(k, x.shape[0])
    g = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ cent.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                cent[j] = F.normalize(members.mean(0), dim=0)
    return cent


class PrototypeRouter:
    def __init__(self, per_task: int = 16, temperature: float = 0.02) -> None:
        self.per_task, self.temperature = per_task, temperature
        self.names: list[str] = []
        self.protos: list[torch.Tensor] = []  # per task (k, C), unit rows

    def add(self, name: str, embeddings: torch.Tensor) -> None:
        x = F.normalize(embeddings.float(), dim=-1)
        cent = kmeans(x, self.per_task)
        if name in self.names:
            self.protos[self.names.index(name)] = cent
        else:
            self.names.append(name)
            self.protos.append(cent)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, tasks): each task's best prototype similarity."""
        x = F.normalize(embeddings.float(), dim=-1)
        return torch.stack([(x @ p.T).max(1).values for p in self.protos], dim=1)

    def route(self, embeddings: torch.Tensor, nodes: list[dict] | None = None) -> list[tuple[str, float]]:
        """(task, confidence) per input: the best prototype's task, or with a tree view's `nodes`
        the leaf that `descend` reaches; confidence is that task's softmax share."""
        if not self.names:
            raise StateError("the router knows no task yet")
        scores = self.scores(embeddings)
        probs = torch.softmax(scores / self.temperature, dim=1)
        picks = [self.descend(row, nodes) if nodes is not None else int(row.argmax()) for row in scores]
        return [(self.names[k], float(probs[row, k])) for row, k in enumerate(picks)]

    def descend(self, scores: torch.Tensor, nodes: list[dict]) -> int:
        """Tree routing for one input: from the top level of a tree view (`views.tree_view`
        nodes), take at each level the child whose member tasks score best on average, down to a
        leaf; -> the index of its task in `names`. scores: (tasks,) from `scores()`."""
        by_id = {n["id"]: n for n in nodes}
        level = [n["id"] for n in nodes if n["parent"] is None]
        if not level:
            return int(scores.argmax())

        def mean_score(node_id: str) -> float:
            members = [self.names.index(t) for t in by_id[node_id]["members"] if t in self.names]
            return float(scores[members].mean()) if members else -1.0

        while True:
            best = by_id[max(level, key=mean_score)]
            if best["task"] is not None or not best["children"]:
                return self.names.index(best["task"] or best["members"][0])
            level = best["children"]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"proto.{n}": p for n, p in zip(self.names, self.protos, strict=True)}

    def load(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        self.names = list(names)
        self.protos = [tensors[f"proto.{n}"].float() for n in names]
